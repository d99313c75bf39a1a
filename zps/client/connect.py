"""Connecting (sans-IO): say hello to every server and find each shard's primary.

A shard with a standby is asked on both of its servers; the one that says it is primary
with the newest epoch wins (after a takeover the old primary may be back as the new
standby). A shard is decided once both answered, or a primary answered and ``SETTLE``
seconds passed without the other; all must be decided within ``connect_timeout``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from zps.client.calls import unreachable_message
from zps.errors import ServerUnreachable, remote_error
from zps.protocol import Op, Reply, Request, encode_request

if TYPE_CHECKING:
    from zps.client.calls import Call
    from zps.client.engine import Engine

log = logging.getLogger("zps.client")

SETTLE = 0.2  # seconds to wait for a shard's other server once one said it is primary


class Connecting:
    """The hellos of ``engine.connect`` and what they answered."""

    def __init__(self, engine: Engine, call: Call, deadline: float) -> None:
        self.engine = engine
        self.call = call
        self.deadline = deadline
        self.asked: dict[int, tuple[int, int]] = {}  # request id -> (shard, slot)
        self._answers: dict[int, dict[int, dict[str, Any]]] = {}
        self._first_primary: dict[int, float] = {}
        self._decided: set[int] = set()

    def next_deadline(self) -> float:
        settles = [t + SETTLE for s, t in self._first_primary.items() if s not in self._decided]
        return min([self.deadline, *settles])

    def answer(self, rid: int, reply: Reply, now: float) -> None:
        shard, slot = self.asked.pop(rid)
        engine = self.engine
        if reply.error is not None:
            self._fail(remote_error(reply.error[0], f"hello failed: {reply.error[1]}",
                                    engine.endpoints[2 * shard + slot]))
            return
        self._answers.setdefault(shard, {})[slot] = reply.info
        if _primary(reply.info) or not engine.has_standby(shard):
            self._first_primary.setdefault(shard, now)
        self._decide(shard, now)
        self._finish_if_done(now)

    def expire(self, now: float) -> None:
        for shard in range(len(self.engine.servers)):
            self._decide(shard, now)
        if self._finish_if_done(now) or now < self.deadline:
            return
        shard = min(set(range(len(self.engine.servers))) - self._decided)
        answers = self._answers.get(shard, {})
        address = self.engine.endpoints[2 * shard]
        if answers:
            roles = ", ".join(f"{self.engine.endpoints[2 * shard + s]} is a "
                              f"{i.get('role')}" for s, i in answers.items())
            message = (f"no primary answered for the shard of {address} within "
                       f"{self.engine.config.connect_timeout:g} s ({roles}); start its primary "
                       "or wait for the standby to take over")
        else:
                message = unreachable_message(address, Op.HELLO, 1,
                                          self.engine.config.connect_timeout)
        self._fail(ServerUnreachable(message))

    def _decide(self, shard: int, now: float) -> None:
        if shard in self._decided:
            return
        engine = self.engine
        answers = self._answers.get(shard, {})
        # A shard without a standby takes its one server's answer (a standby's too: its
        # requests then say it is not the primary).
        primaries = [(_epoch(info), slot) for slot, info in answers.items()
                     if _primary(info) or not engine.has_standby(shard)]
        if not primaries:
            return
        slots = 2 if engine.has_standby(shard) else 1
        if len(answers) < slots and now < self._first_primary[shard] + SETTLE:
            return
        epoch, slot = max(primaries)
        if slot == 1:
            log.warning("server %s is not the primary of its shard; using %s (epoch %d)",
                        engine.endpoints[2 * shard], engine.endpoints[2 * shard + 1], epoch)
        engine.active[shard] = slot
        engine.adopt_hello(shard, answers[slot])
        self._decided.add(shard)

    def _finish_if_done(self, now: float) -> bool:
        if len(self._decided) < len(self.engine.servers):
            return False
        self.engine.connected(now)
        self.engine.finish_call(self.call)
        return True

    def _fail(self, error: Exception) -> None:
        self.engine.connecting_failed()
        self.engine.finish_call(self.call, error)


def _primary(info: dict[str, Any]) -> bool:
    return info.get("role", "primary") == "primary"


def _epoch(info: dict[str, Any]) -> int:
    epoch = info.get("epoch")
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else 0


def hello_frames(engine: Engine, shard: int, rid: int) -> list[Any]:
    """A hello to ``shard``: the role, the layout, and the rank held or wanted."""
    config = engine.config
    options: dict[str, Any] = {"role": config.role,
                               "layout": [len(engine.servers), config.chunk_bytes, shard]}
    if config.role == "worker" and config.rank is not None:
        options["rank"] = config.rank
    elif config.role == "worker" and engine.rank is not None:
        options["rank_hint"] = engine.rank  # assigned before: kept across failovers if free
    return encode_request(Request(Op.HELLO, engine.client_id, rid, options=options))
