"""Registering again and failing over (sans-IO, part of the client engine).

A server that forgot this client (it declared it dead during a long pause, or it is a
standby that just took over) answers ``not_registered``: the engine holds that shard's
requests, says hello again, and resends them with the same ids once hello is answered.
A shard with a standby has a ``watch`` left with the standby, which answers the moment it
takes over; the engine then switches the shard to it, registers there first (so no request
is refused for not being registered), resends what was in flight, and watches the old
primary, which may come back as the new standby.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from zps.client.calls import REGISTERING, as_int, unreachable_message
from zps.client.connect import hello_frames
from zps.errors import ServerUnreachable, remote_error
from zps.protocol import Op, Reply, Request, encode_request

if TYPE_CHECKING:
    from zps.client.engine import Engine

log = logging.getLogger("zps.client")


@dataclass(slots=True)
class _Hello:
    """A hello in flight that registers this client with a shard's primary again."""

    shard: int
    deadline: float
    attempts_left: int


class Failover:
    """The hellos and watches of one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._hellos: dict[int, _Hello] = {}
        self._registering: set[int] = set()
        self._watches: dict[int, int] = {}  # request id of a watch -> shard
        self._watch_due: dict[int, float] = {}

    def registering(self, shard: int) -> bool:
        """Whether a hello to ``shard`` is in flight (its requests wait for it)."""
        return shard in self._registering

    def next_deadline(self) -> float:
        times = [h.deadline for h in self._hellos.values()]
        return min([*times, *self._watch_due.values()], default=float("inf"))

    def take(self, rid: int, endpoint: int, reply: Reply, now: float) -> bool:
        """Handle ``reply`` if it answers a hello or a watch of ours."""
        hello = self._hellos.pop(rid, None)
        if hello is not None:
            self._on_hello(hello, endpoint, reply, now)
            return True
        shard = self._watches.pop(rid, None)
        if shard is not None:
            self._on_watch(shard, endpoint, reply, now)
            return True
        return False

    def register(self, shard: int, now: float, attempts: int | None = None) -> None:
        """Say hello again to ``shard``'s primary; its held requests follow the answer."""
        if shard in self._registering:
            return
        engine = self.engine
        self._registering.add(shard)
        rid = engine.new_id()
        self._hellos[rid] = _Hello(shard, now + engine.config.connect_timeout,
                                   engine.config.retries if attempts is None else attempts)
        engine.add_send(2 * shard + engine.active[shard], hello_frames(engine, shard, rid))

    def watch(self, shard: int, now: float) -> None:
        """Ask shard's standby to answer once it has taken over (a primary answers at
        once, so a takeover missed while away is noticed). The standby keeps one watch per
        client, so re-arming it every ``timeout`` piles nothing up."""
        engine = self.engine
        for rid in [r for r, s in self._watches.items() if s == shard]:
            del self._watches[rid]
        rid = engine.new_id()
        self._watches[rid] = shard
        self._watch_due[shard] = now + engine.config.timeout
        engine.add_send(2 * shard + 1 - engine.active[shard],
                        encode_request(Request(Op.WATCH, engine.client_id, rid)))

    def expire(self, now: float) -> None:
        """Resend hellos that timed out (or give up on their shard); re-arm watches."""
        for rid, hello in list(self._hellos.items()):
            if hello.deadline <= now:
                del self._hellos[rid]
                self._registering.discard(hello.shard)
                if hello.attempts_left > 0:
                    self.register(hello.shard, now, hello.attempts_left - 1)
                else:
                    self._fail_registering(hello.shard)
        for shard, due in list(self._watch_due.items()):
            if due <= now:
                self.watch(shard, now)

    def _on_hello(self, hello: _Hello, endpoint: int, reply: Reply, now: float) -> None:
        engine, shard = self.engine, hello.shard
        if endpoint != 2 * shard + engine.active[shard]:
            return  # from a server this shard has left (its hello was replaced at the switch)
        self._registering.discard(shard)
        held = [p for p in engine.in_flight(shard) if p.state == REGISTERING]
        if reply.error is not None:
            error = remote_error(reply.error[0], f"hello failed: {reply.error[1]}",
                                 engine.address(shard))
            for pending in held:
                engine.finish_call(pending.call, error)
            return
        engine.adopt_hello(shard, reply.info)
        for pending in held:
            engine.resend(pending, now)

    def _on_watch(self, shard: int, endpoint: int, reply: Reply, now: float) -> None:
        engine, info = self.engine, reply.info
        epoch = as_int(info.get("epoch"))
        if reply.error is not None or endpoint != 2 * shard + 1 - engine.active[shard] \
                or info.get("role") != "primary" or epoch <= engine.epochs[shard]:
            return  # re-armed when due
        log.warning("zps server %s took over from %s (epoch %d); switching",
                    engine.endpoints[endpoint], engine.address(shard), epoch)
        engine.active[shard] = 1 - engine.active[shard]
        engine.metrics.failovers += 1
        engine.adopt_hello(shard, info)
        engine.epochs[shard] = epoch
        if engine.held is not None:
            engine.held.clear()  # delta pulls start again from whole tables
        for pending in engine.in_flight(shard):
            pending.state, pending.whole = REGISTERING, True
        for rid in [r for r, h in self._hellos.items() if h.shard == shard]:
            del self._hellos[rid]  # a hello to the old primary: its answer no longer counts
        self._registering.discard(shard)
        self.register(shard, now)  # the new primary does not know this client yet
        self.watch(shard, now)  # the old primary may come back as the new standby

    def _fail_registering(self, shard: int) -> None:
        engine = self.engine
        error = ServerUnreachable(unreachable_message(engine.address(shard), Op.HELLO, 1,
                                                      engine.config.connect_timeout))
        for pending in engine.in_flight(shard):
            if pending.state == REGISTERING:
                engine.finish_call(pending.call, error)
