"""The server's handlers: one function per op, over the store and the consistency rules.

``ServerCore.handle`` takes a validated ``Request`` and returns a ``Reply`` or, when the
answer must wait for a sync round to close, a coroutine producing the reply. It does no
socket I/O; ``zps.server.app`` is the thin asyncio shell that feeds it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np

from zps.config import ServerConfig
from zps.consistency import BspRounds, ClosedRound
from zps.errors import ProtocolError
from zps.protocol import PROTOCOL_VERSION, Op, Reply, Request, TensorMeta
from zps.server.members import ROLES, Membership
from zps.store import DedupWindow, Store, Table

log = logging.getLogger("zps.server")

Result = Reply | Coroutine[Any, Any, Reply]


class ServerCore:
    """State and handlers of one server process (one shard)."""

    def __init__(self, config: ServerConfig, server_id: str) -> None:
        self.config = config
        self.server_id = server_id
        self.store = Store(config.log_entries, config.log_bytes)
        self.dedup = DedupWindow()
        self.members = Membership()
        self.rounds: BspRounds[np.ndarray] = BspRounds(config.workers)
        self._waiters: dict[str, list[tuple[int, asyncio.Future[None]]]] = {}
        self._lead_table: str | None = None
        self.counters: dict[str, int] = dict.fromkeys(
            ("requests", "errors", "pushes", "duplicates", "pulls", "rounds", "heartbeats",
             "dead", "bytes_in", "bytes_out"), 0
        )
        self.handlers: dict[Op, Callable[[Request], Result]] = {
            Op.HELLO: self.hello,
            Op.INIT: self.init,
            Op.PUSH: self.push,
            Op.PULL: self.pull,
            Op.PUSH_PULL: self.push_pull,
            Op.HEARTBEAT: self.heartbeat,
            Op.STATS: self.stats,
            Op.BYE: self.bye,
        }

    @property
    def sync(self) -> bool:
        return self.config.mode == "sync"

    def handle(self, request: Request) -> Result:
        """Dispatch ``request`` to its handler. Raises ``ProtocolError`` for bad requests."""
        self.counters["requests"] += 1
        self.members.touch(request.client_id, time.monotonic())
        return self.handlers[request.op](request)

    # ------------------------------------------------------------ membership

    def hello(self, request: Request) -> Reply:
        role = request.options.get("role", "worker")
        if role not in ROLES:
            raise ProtocolError("bad_header", f"role {role!r} must be one of {ROLES}")
        known = self.members.get(request.client_id)
        if known is not None and known.role != role:
            raise ProtocolError(
                "bad_header",
                f"client {request.client_id} is registered as {known.role}; a role cannot "
                "change, connect with another client id",
            )
        _, new = self.members.add(request.client_id, role, time.monotonic())
        if role == "worker":
            self.rounds.join(request.client_id)
        if new:
            workers = len(self.members.workers())
            log.info("%s %s joined (%d workers)", role, request.client_id, workers)
        return self._reply(request, info=self._hello_info())

    def _hello_info(self) -> dict[str, Any]:
        return {
            "server_id": self.server_id,
            "protocol": PROTOCOL_VERSION,
            "mode": self.config.mode,
            "workers": self.config.workers,
            "heartbeat_interval": self.config.heartbeat_interval,
            "liveness": self.config.liveness,
            "max_message_bytes": self.config.limits.max_message_bytes,
        }

    def bye(self, request: Request) -> Reply:
        self.forget(request.client_id, "left")
        return self._reply(request)

    def heartbeat(self, request: Request) -> Reply:
        self.counters["heartbeats"] += 1
        if request.client_id not in self.members:
            raise ProtocolError("not_registered", "unknown client: send hello again")
        return self._reply(request)

    def forget(self, client_id: str, why: str) -> None:
        """Remove a member (bye, or silent past the liveness deadline) from every barrier."""
        member = self.members.remove(client_id)
        if member is None:
            return
        log.info("%s %s %s (%d workers)", member.role, client_id, why, len(self.members.workers()))
        if member.role == "worker":
            self._apply_closed(self.rounds.leave(client_id))

    def reap(self, now: float) -> None:
        """Declare dead every member silent for heartbeat_interval x liveness."""
        deadline = now - self.config.heartbeat_interval * self.config.liveness
        for member in self.members.silent_since(deadline):
            self.counters["dead"] += 1
            self.forget(member.client_id, "declared dead (no heartbeat)")

    # ------------------------------------------------------------ tables

    def init(self, request: Request) -> Reply:
        arrays = request.arrays()
        fresh = [name for name in arrays if name not in self.store]
        for name, array in arrays.items():  # check everything before creating anything
            if name in self.store:
                self._check_same(self.store.get(name), array, "init")
        for name in fresh:
            self.store.create(name, arrays[name])
            self._lead_table = self._lead_table or name
            log.info("table %s created: %s %s", name, arrays[name].dtype, arrays[name].shape)
        return self._tables_reply(request, [self.store.get(n) for n in arrays])

    def push(self, request: Request) -> Result:
        self._accept_push(request)
        if not self.sync:
            return self._reply(request, info={"seq": self.store.seq})
        return self._reply(request)

    def pull(self, request: Request) -> Result:
        tables = [self.store.get(name) for name in request.names]
        self.counters["pulls"] += 1
        return self._answer_after_rounds(request, tables)

    def push_pull(self, request: Request) -> Result:
        self._accept_push(request)
        self.counters["pulls"] += 1
        tables = [self.store.get(m.name) for m in request.tensors]
        return self._answer_after_rounds(request, tables)

    def _accept_push(self, request: Request) -> None:
        """Validate a push completely, then apply it (async) or add it to its round (sync)."""
        arrays = request.arrays()
        for name, array in arrays.items():
            self._check_same(self.store.get(name), array, "push")
        if self.sync and request.client_id not in self.rounds.members:
            raise ProtocolError(
                "not_registered",
                f"client {request.client_id} is not a registered worker of this sync job: "
                "send hello with role 'worker' first (it may have been declared dead)",
            )
        if self.dedup.seen(request.client_id, request.request_id):
            self.counters["duplicates"] += 1
            return
        self.dedup.record(request.client_id, request.request_id)
        self.counters["pushes"] += 1
        self.counters["bytes_in"] += sum(m.nbytes for m in request.tensors)
        for name, array in arrays.items():
            if self.sync:
                _, closed = self.rounds.push(name, request.client_id, array)
                self._apply_closed(closed)
            else:
                self.store.apply(name, array, self.config.lr_scale)

    def _check_same(self, table: Table, array: np.ndarray, what: str) -> None:
        if table.data.shape != array.shape or table.data.dtype != array.dtype:
            code = "conflict" if what == "init" else "shape_mismatch"
            raise ProtocolError(
                code,
                f"{what} of {table.name!r} with {array.dtype}{list(array.shape)} does not match "
                f"the table's {table.data.dtype}{list(table.data.shape)}",
            )

    # ------------------------------------------------------------ sync rounds

    def _apply_closed(self, closed: list[ClosedRound[np.ndarray]]) -> None:
        for done in closed:
            self.store.apply(done.key, _mean(done.payloads))
            self.counters["rounds"] += 1
            self._wake(done.key, done.round)
            if done.key == self._lead_table and done.round % self.config.log_every_rounds == 0:
                log.info(
                    "round %d applied (seq %d, %d workers)",
                    done.round, self.store.seq, len(self.rounds.members),
                )

    def _answer_after_rounds(self, request: Request, tables: list[Table]) -> Result:
        waits = [
            (t.name, target)
            for t in tables
            if (target := self.rounds.last_round(t.name, request.client_id))
            > self.rounds.closed(t.name)
        ]
        if not waits:
            return self._tables_reply(request, tables)
        return self._reply_when_closed(request, tables, waits)

    async def _reply_when_closed(
        self, request: Request, tables: list[Table], waits: list[tuple[str, int]]
    ) -> Reply:
        loop = asyncio.get_running_loop()
        for key, target in waits:
            if self.rounds.closed(key) < target:
                future: asyncio.Future[None] = loop.create_future()
                self._waiters.setdefault(key, []).append((target, future))
                await future
        return self._tables_reply(request, tables)

    def _wake(self, key: str, closed: int) -> None:
        waiting = self._waiters.get(key)
        if not waiting:
            return
        still = []
        for target, future in waiting:
            if target <= closed:
                if not future.done():
                    future.set_result(None)
            else:
                still.append((target, future))
        self._waiters[key] = still

    # ------------------------------------------------------------ stats and replies

    def stats(self, request: Request) -> Reply:
        now = time.monotonic()
        info = {
            **self._hello_info(),
            "seq": self.store.seq,
            "counters": dict(self.counters),
            "tables": [
                {
                    "name": t.name,
                    "dtype": t.data.dtype.name,
                    "shape": list(t.data.shape),
                    "version": t.version,
                    "rounds": self.rounds.closed(t.name),
                    "waiting_for": list(self.rounds.pending(t.name)) if self.sync else [],
                }
                for t in self.store
            ],
            "members": [
                {
                    "id": m.client_id,
                    "role": m.role,
                    "age": round(now - m.joined_at, 3),
                    "silent": round(now - m.last_seen, 3),
                }
                for m in self.members
            ],
        }
        return self._reply(request, info=info)

    def _reply(self, request: Request, info: dict[str, Any] | None = None) -> Reply:
        return Reply(request.request_id, info={"sid": self.server_id, **(info or {})})

    def _tables_reply(self, request: Request, tables: list[Table]) -> Reply:
        metas = tuple(TensorMeta.of(t.name, t.data) for t in tables)
        self.counters["bytes_out"] += sum(m.nbytes for m in metas)
        versions = {t.name: t.version for t in tables}
        return Reply(
            request.request_id,
            tensors=metas,
            info={"sid": self.server_id, "versions": versions},
            buffers=tuple(t.data for t in tables),
        )

    def cancel_waiters(self) -> None:
        """Fail every pull still waiting for a round (the server is shutting down)."""
        for waiting in self._waiters.values():
            for _, future in waiting:
                if not future.done():
                    future.set_exception(
                        ProtocolError("shutting_down", "the server is shutting down")
                    )
        self._waiters.clear()


def _mean(payloads: tuple[np.ndarray, ...]) -> np.ndarray:
    """``1/N * sum(payloads)``, with one temporary and in-place adds."""
    if len(payloads) == 1:
        return payloads[0]
    total = np.array(payloads[0], copy=True)
    for payload in payloads[1:]:
        np.add(total, payload, out=total)
    np.multiply(total, 1.0 / len(payloads), out=total)
    return total
