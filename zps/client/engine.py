"""The client engine (sans-IO, h11-style): events in, frames to send out.

One engine holds everything a client knows and decides: the servers of each shard and
which one is primary (epochs), the table layout, request ids and the watermark sent with
every update, retries and deadlines, registering again when a server forgot this client,
failover to a shard's standby, and the copies delta pulls start from. It never touches a
socket: the blocking ``Client`` and the ``AsyncClient`` feed it replies and the time, and
send what it queues (``take_sends``). Both therefore behave the same by construction, and a
call is a handle that completes whenever its replies are in. Endpoints are numbered
``2 * shard + slot``: slot 0 is the server given for the shard, slot 1 its standby.
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from zps.client.calls import (
    HELD,
    REGISTERING,
    SENT,
    Call,
    Pending,
    Send,
    as_int,
    unreachable_message,
)
from zps.client.connect import Connecting, hello_frames
from zps.client.deltas import HeldCopies, StaleBase
from zps.client.failover import Failover
from zps.client.metrics import ClientMetrics
from zps.client.plans import Planner, scatter, server_list
from zps.client.rowcalls import RowCalls
from zps.config import ClientConfig
from zps.errors import (
    ClosedError,
    ConfigError,
    ConnectionLost,
    ServerUnreachable,
    ZpsError,
    remote_error,
)
from zps.protocol import UPDATE_OPS, Op, Reply, Request, RequestEncoder
from zps.protocol.batch import BATCH_BYTES, coalesce

log = logging.getLogger("zps.client")

HANDOVER_ERRORS = ("not_primary", "shutting_down")  # the shard is changing hands
HEARTBEAT_IDS = 1 << 62  # heartbeats never meet the request ids the servers track
ID_WINDOW = 1 << 15  # unfinished request ids a client keeps above its watermark
DATA_OPS = (Op.INIT, Op.PULL, Op.PUSH_PULL)  # replies that carry table values


class Engine:
    """All of a client's state and decisions, without I/O."""

    groups: dict[str, list[str]] = {}  # server -> its --procs group (connect.regrouped)

    def __init__(self, servers: str | Sequence[str], config: ClientConfig | None = None,
                 **overrides: Any) -> None:
        self.config = replace(config or ClientConfig(), **overrides)
        self.servers = server_list(servers)
        self.client_id = self.config.client_id or f"c-{uuid.uuid4().hex[:12]}"
        standbys = list(self.config.standbys)
        if standbys and len(standbys) != len(self.servers):
            raise ConfigError(f"give one standby per server ({len(self.servers)}), in the "
                              f"same order, '' for a server without one; got {len(standbys)}")
        self.standbys = standbys or [""] * len(self.servers)
        self.endpoints = [a for pair in zip(self.servers, self.standbys, strict=True)
                          for a in pair]
        shards = len(self.servers)
        self.active = [0] * shards
        self.epochs = [0] * shards
        self.server_ids: list[str | None] = [None] * shards
        self.hello: list[dict[str, Any]] = [{} for _ in range(shards)]
        self.batching = [0] * shards  # requests each shard's server takes in one message
        self.rank = self.config.rank  # a worker's: given, or assigned by the first server
        self.planner = Planner(self.config, shards)
        self.rows = RowCalls(shards, self.config.chunk_bytes, self.planner.codec,
                             self.planner.limits)
        pull = self.planner.pull_codec
        self.held = HeldCopies(pull, self.config) if pull is not None else None
        self.closed = False
        self.closing = False  # saying goodbye: nothing registers again
        self.metrics = ClientMetrics()
        self._next_id = 1
        self._heartbeat_id = HEARTBEAT_IDS
        self._inflight: dict[int, Pending] = {}  # by request id: ids increase, so the
        self._queue: deque[Pending] = deque()    # first key is the watermark
        self.failover = Failover(self)
        self._connecting: Connecting | None = None
        self._delta_call: Call | None = None
        self._delta_waiting: deque[Call] = deque()
        self._sends: list[Send] = []
        self._encoder = RequestEncoder()  # each kind of request's header packed once
        self._now = 0.0  # the time of the latest event

    # ------------------------------------------------------------ shells' side

    def take_sends(self) -> list[Send]:
        """The frames to send, to which endpoint, in order (then forgotten); the small
        requests to a server that takes batches joined into one message."""
        sends, self._sends = self._sends, []
        return coalesce(sends, self._batch_limit) if len(sends) > 1 else sends

    def _batch_limit(self, endpoint: int) -> tuple[int, int]:
        shard, slot = divmod(endpoint, 2)
        most = self.planner.limits[shard]  # the server's max_message_bytes
        return (self.batching[shard] if slot == self.active[shard] else 0,
                BATCH_BYTES if most is None else most)

    def address(self, shard: int) -> str:
        """The address of the server requests of ``shard`` go to now."""
        return self.endpoints[2 * shard + self.active[shard]]

    def has_standby(self, shard: int) -> bool:
        return bool(self.standbys[shard])

    def next_deadline(self) -> float | None:
        """When ``expire`` must run next (None: nothing is waiting on time)."""
        best = float("inf")
        for pending in self._inflight.values():  # (called on every wait: no lists)
            if pending.deadline < best and pending.state != REGISTERING:
                best = pending.deadline
        best = min(best, self.failover.next_deadline())
        if self._connecting is not None:
            best = min(best, self._connecting.next_deadline())
        return None if best == float("inf") else best

    def start(self, call: Call, now: float) -> Call:
        """Begin ``call``; its requests go out as ``max_inflight`` allows."""
        if self.closed:
            raise ClosedError("this zps client is closed")
        self._now = call.started = now
        if call.delta and self._delta_call is not None:
            self._delta_waiting.append(call)  # a delta applies to the copy the last one left
            return call
        self._begin(call, now)
        return call

    def heartbeats(self) -> list[Send]:
        """A heartbeat for each shard's current server (their replies are ignored)."""
        sends = []
        for shard in range(len(self.servers)):
            self._heartbeat_id += 1
            sends.append((2 * shard + self.active[shard], self._encoder.frames(
                Request(Op.HEARTBEAT, self.client_id, self._heartbeat_id))))
        return sends

    def begin_close(self) -> None:
        """The goodbye starts: calls with no request sent fail (``ClosedError``), the
        others' rest goes out before it, and nothing registers again."""
        self.closing = True
        sent = {pending.call for pending in self._inflight.values()}
        waiting, self._delta_waiting = list(self._delta_waiting), deque()
        for call in [*waiting, *(p.call for p in self._queue if p.call not in sent)]:
            self._complete(call, ClosedError("the client was closed before this call was sent"))

    def close(self) -> None:
        """Refuse new calls and fail those still running (or waiting to start)."""
        self.closed = True
        waiting, self._delta_waiting = list(self._delta_waiting), deque()
        for call in [*waiting, *(p.call for p in [*self._inflight.values(), *self._queue])]:
            self._complete(call, ClosedError("the client was closed"))

    # ------------------------------------------------------------ connecting

    def connect(self, now: float) -> Call:
        """Say hello to every server (each shard's standby too, to find its primary)."""
        call = Call(Op.HELLO, [], started=now)
        self._connecting = Connecting(self, call, now + self.config.connect_timeout)
        for shard in range(len(self.servers)):
            for slot in (0, 1) if self.has_standby(shard) else (0,):
                rid = self.new_id()
                self._connecting.asked[rid] = (shard, slot)
                self._sends.append((2 * shard + slot, hello_frames(self, shard, rid, slot)))
        return call

    def connecting_failed(self) -> None:
        self._connecting = None

    def finish_call(self, call: Call, error: BaseException | None = None) -> None:
        """Complete ``call`` (for the parts of the engine that run calls of their own, and
        a shell abandoning a cancelled call); what it held back may be sent now."""
        if call in self._delta_waiting:
            self._delta_waiting.remove(call)
        self._complete(call, error)
        if self._queue:
            self._pump(self._now)

    def connected(self, now: float) -> None:
        """Every shard has its primary: watch the standbys for a takeover."""
        self._connecting = None
        for shard in range(len(self.servers)):
            if self.has_standby(shard):
                self.failover.watch(shard, now)

    def adopt_hello(self, shard: int, info: dict[str, Any]) -> None:
        """What a shard's primary said in answer to hello (the first one: the rank)."""
        self.hello[shard] = info
        self.epochs[shard] = max(self.epochs[shard], as_int(info.get("epoch")))
        self.server_ids[shard] = info.get("sid") or info.get("server_id")
        self.batching[shard] = as_int(info.get("batch")) if self.config.coalesce else 0
        limit = info.get("max_message_bytes")
        self.planner.limits[shard] = limit if isinstance(limit, int) else None
        self._next_id = max(self._next_id, as_int(info.get("next_id")))  # above ids it saw
        if shard == 0 and self.config.rank is None and isinstance(info.get("rank"), int):
            self.rank = info["rank"]

    # ------------------------------------------------------------ replies

    def receive(self, endpoint: int, reply: Reply, now: float, filled: bool = False) -> None:
        """A reply arrived from ``endpoint``; ``filled``: its arrays were received
        straight into the places ``sinks`` gave."""
        self._now = now
        rid = reply.request_id
        if rid is None:
            log.warning("error from %s about an unreadable request: %s",
                        self.endpoints[endpoint], reply.error)
            return
        if self._connecting is not None and rid in self._connecting.asked:
            self._connecting.answer(rid, reply, now)
        elif self.failover.take(rid, endpoint, reply, now):
            pass
        elif (pending := self._inflight.get(rid)) is not None and pending.state == SENT \
                and endpoint == pending.endpoint:
            self._on_reply(pending, reply, now, filled)
        if self._queue:
            self._pump(now)

    def awaiting(self, endpoint: int, reply: Reply) -> Pending | None:
        """The request in flight ``reply`` answers (from where it went; not deposed)."""
        pending = self._inflight.get(reply.request_id) if reply.request_id is not None \
            else None
        if pending is None or pending.endpoint != endpoint or pending.state != SENT \
                or as_int(reply.info.get("epoch")) < self.epochs[pending.message.server]:
            return None
        return pending

    def _on_reply(self, pending: Pending, reply: Reply, now: float, filled: bool) -> None:
        shard = pending.message.server
        if as_int(reply.info.get("epoch")) < self.epochs[shard]:
            return  # a deposed primary
        sid, known = reply.info.get("sid"), self.server_ids[shard]
        if known is not None and sid is not None and sid != known:
            self._complete(pending.call, ConnectionLost(
                f"the zps server at {self.address(shard)} restarted (instance {known} is now "
                f"{sid}) and lost its tables; restart the job, or standbys will recover it"))
            return
        if reply.error is not None:
            self._on_error(pending, reply.error, now)
            return
        call = pending.call
        try:
            if call.op in DATA_OPS and not filled:
                if call.delta:
                    assert self.held is not None
                    self.held.scatter(reply, pending.message, call.out)
                else:
                    scatter(reply, pending.message, call.out)
        except StaleBase:
            pending.whole = True  # the copy it started from is gone: ask for whole parts
            self.resend(pending, now)
            return
        except ZpsError as exc:
            self._complete(call, exc)
            return
        del self._inflight[pending.rid]
        call.replies[pending.index] = reply
        call.left -= 1
        if call.left == 0:
            self._complete(call)

    def _on_error(self, pending: Pending, error: tuple[str, str], now: float) -> None:
        code, text = error
        shard = pending.message.server
        if code in HANDOVER_ERRORS and self.has_standby(shard):
            pending.state = HELD  # resent when the standby has taken over (or on timeout)
            return
        if code == "not_registered" and self.closing:  # (its goodbye made the server forget)
            self._complete(pending.call, ClosedError(
                f"the client was closed before {pending.message.op} was answered"))
            return
        if code == "not_registered" and not pending.registered:
            pending.registered = True  # once per request: an observer's push stops here
            pending.state = REGISTERING
            log.info("%s (%s); registering again", text, self.address(shard))
            self.failover.register(shard, now)
            return
        self._complete(pending.call, remote_error(code, f"{pending.message.op} failed: {text}",
                                                  self.address(shard)))

    # ------------------------------------------------------------ time

    def expire(self, now: float) -> None:
        """Resend what timed out, give up on what ran out of attempts, re-arm watches."""
        self._now = now
        if self._connecting is not None:
            self._connecting.expire(now)
        for pending in list(self._inflight.values()):
            if pending.deadline > now or pending.state == REGISTERING \
                    or self._inflight.get(pending.rid) is not pending:
                continue  # (the last: its call failed meanwhile)
            if pending.attempts_left <= 0:
                call = pending.call
                self._complete(call, ServerUnreachable(unreachable_message(
                    self.address(pending.message.server), pending.message.op,
                    call.attempts or 1 + self.config.retries,
                    call.timeout or self.config.timeout)))
            else:
                self.metrics.retries += 1
                self._transmit(pending, now)
        self.failover.expire(now)
        self._pump(now)

    # ------------------------------------------------------------ requests

    def _begin(self, call: Call, now: float) -> None:
        whole = False
        if call.delta:
            assert self.held is not None
            self._delta_call = call
            whole = self.held.next_pull()
        call.replies = [None] * len(call.messages)
        call.left = len(call.messages)
        if not call.messages:
            self._complete(call)
            return
        for index in range(len(call.messages)):
            self._queue.append(Pending(call, index, 0, whole=whole))
        self._pump(now)

    def _pump(self, now: float) -> None:
        """Send queued requests while fewer than ``max_inflight`` are in flight."""
        queue, inflight = self._queue, self._inflight
        while queue and (len(inflight) < self.config.max_inflight or self.closing):
            if inflight and self._next_id - next(iter(inflight)) >= ID_WINDOW:
                break  # an old request still unfinished: keep ids within the window
            pending = queue.popleft()
            if pending.call.done:
                continue
            pending.rid = self.new_id()
            call = pending.call
            pending.attempts_left = (call.attempts if call.attempts is not None
                                     else 1 + self.config.retries)
            inflight[pending.rid] = pending
            self._transmit(pending, now)

    def resend(self, pending: Pending, now: float) -> None:
        """Send again without spending an attempt (a takeover, a registration)."""
        pending.attempts_left += 1
        self._transmit(pending, now)

    def _transmit(self, pending: Pending, now: float) -> None:
        shard = pending.message.server
        if self.failover.registering(shard):
            pending.state = REGISTERING
            return
        pending.endpoint = 2 * shard + self.active[shard]
        pending.state = SENT
        pending.attempts_left -= 1
        timeout = pending.call.timeout
        pending.deadline = now + (self.config.timeout if timeout is None else timeout)
        try:
            self._sends.append((pending.endpoint, self._frames(pending)))
        except (TypeError, ValueError) as exc:  # (an option msgpack cannot carry)
            self._complete(pending.call, ConfigError(f"cannot send {pending.message.op}: "
                                                     f"{exc}; give plain numbers and strings"))

    def _frames(self, pending: Pending) -> list[Any]:
        message = pending.message
        options = message.options
        if pending.call.delta:
            assert self.held is not None
            options = self.held.options(message, pending.whole)
        watermark = next(iter(self._inflight), pending.rid) if message.op in UPDATE_OPS else None
        return self._encoder.frames(Request(
            message.op, self.client_id, pending.rid, message.tensors, message.names, options,
            message.buffers, message.encoded, watermark))

    def in_flight(self, shard: int) -> list[Pending]:
        """The requests in flight to ``shard``."""
        return [p for p in self._inflight.values() if p.message.server == shard]

    def add_send(self, endpoint: int, frames: list[Any]) -> None:
        self._sends.append((endpoint, frames))

    def new_id(self) -> int:
        """A fresh request id (hellos and watches too, which no server tracks)."""
        self._next_id += 1
        return self._next_id - 1

    def _complete(self, call: Call, error: BaseException | None = None) -> None:
        if call.done:
            return
        if error is None:
            try:
                call.value = call.finish(call) if call.finish is not None else call.out
            except Exception as exc:  # (a device copy failing, too: the call's error)
                error = exc
        call.error, call.done = error, True
        self.metrics.done(call.op, call.started, self._now, error is not None)
        if error is not None:  # (on success every request of it is already done)
            for rid in [r for r, p in self._inflight.items() if p.call is call]:
                del self._inflight[rid]
            if self._queue:
                self._queue = deque(p for p in self._queue if p.call is not call)
        if call is self._delta_call:
            self._delta_call = None
            while self._delta_waiting and not self.closed:
                following = self._delta_waiting.popleft()
                if not following.done:  # (a cancelled one is skipped)
                    self._begin(following, self._now)
                    break
        if call.callback is not None:
            call.callback(call)
