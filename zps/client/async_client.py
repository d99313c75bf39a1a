"""``AsyncClient``: the worker library for asyncio code."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import zmq

from zps.client.connection import Connection, RequestIds, Switched
from zps.client.placement import Layout
from zps.client.session import HANDOVER_ERRORS, Arrays, Message, Session, SessionProperties
from zps.config import ClientConfig
from zps.errors import RejectedError, ServerUnreachable, ZpsError
from zps.protocol import Op

log = logging.getLogger("zps.client")


class AsyncClient(SessionProperties):
    """Push and pull parameters held by one or more zps servers, from asyncio code.

    ``async with AsyncClient(["tcp://127.0.0.1:5570"]) as ps: ...`` connects to every
    server (``ServerUnreachable`` if one does not answer within ``connect_timeout``),
    registers as a worker, and on exit says goodbye and closes its sockets.
    Table placement is learnt from ``init``, which every worker calls with the same shapes.
    Requests time out after ``timeout`` seconds and are resent ``retries`` times with the
    same request id (a push is applied once); a cancelled call drops its late replies.
    """

    def __init__(
        self,
        servers: str | Sequence[str],
        config: ClientConfig | None = None,
        **overrides: Any,
    ) -> None:
        self._session = Session(servers, config, overrides)
        self._context: zmq.Context | None = None
        self._connections: list[Connection] = []
        self._limit: asyncio.Semaphore | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._delta_lock = asyncio.Lock()
        self._ids: RequestIds | None = None
        self._standbys: list[Connection | None] = []  # per shard, its hot standby
        self._epochs: list[int] = []
        self._switched: list[asyncio.Event] = []  # set when a shard's standby takes over
        self._watches: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open a DEALER per server and say hello to each (registers this worker)."""
        self._context = zmq.Context()
        ids = self._ids = RequestIds()
        self._limit = asyncio.Semaphore(self.config.max_inflight)
        try:
            for addr, standby in zip(self.servers, self._session.standbys, strict=True):
                self._connections.append(Connection(self._context, addr, self.client_id, ids))
                self._standbys.append(Connection(self._context, standby, self.client_id, ids)
                                      if standby else None)
            self._epochs = [0] * len(self._connections)
            self._switched = [asyncio.Event() for _ in self._connections]
            await asyncio.gather(*(self._find_primary(i) for i in range(len(self._standbys)))
                                 if any(self._standbys) else ())
            replies = await asyncio.gather(*(self._hello(c) for c in self._connections))
        except BaseException:
            await self.close()
            raise
        if self.config.heartbeat_interval > 0:
            self._heartbeat = asyncio.get_running_loop().create_task(self._heartbeat_loop())
        self._session.hello = list(replies)
        self._epochs = [int(r.get("epoch", 0)) for r in replies]
        for i, alternate in enumerate(self._standbys):
            if alternate is not None:
                self._watch(i)

    async def _find_primary(self, index: int) -> None:
        """Point shard ``index`` at whichever of its two servers says it is the primary."""
        conns = [self._connections[index], self._standbys[index]]

        async def ask(conn: Connection | None) -> tuple[int, bool]:
            if conn is None:
                return -1, False
            try:
                reply = await conn.request(Op.HELLO, options={"role": self.config.role},
                                           timeout=self.config.connect_timeout, attempts=1)
            except ZpsError:
                return -1, False
            return int(reply.info.get("epoch", 0)), reply.info.get("role") == "primary"

        answers = await asyncio.gather(*(ask(c) for c in conns))
        (epoch0, primary0), (epoch1, primary1) = answers
        if primary1 and (not primary0 or epoch1 > epoch0):
            self._swap(index)

    def _swap(self, index: int) -> None:
        standby = self._standbys[index]
        assert standby is not None
        self._standbys[index], self._connections[index] = self._connections[index], standby

    def _watch(self, index: int) -> None:
        """Wait for shard ``index``'s standby to take over, then send there."""
        standby = self._standbys[index]
        assert standby is not None

        async def watch() -> None:
            while True:  # re-armed every timeout: a restarted standby forgot the last one
                try:
                    reply = await standby.request(Op.WATCH, timeout=self.config.timeout,
                                                  attempts=1)
                    break
                except ServerUnreachable:
                    continue
                except ZpsError:
                    return
            epoch = int(reply.info.get("epoch", 0))
            if self._standbys[index] is not standby or epoch <= self._epochs[index]:
                return
            log.warning("zps server %s took over from %s (epoch %d); switching",
                        standby.address, self._connections[index].address, epoch)
            self._epochs[index] = epoch
            old = self._connections[index]
            self._swap(index)
            self._session.held.clear()  # delta pulls start again from whole tables
            old.fail_pending(Switched("the shard's standby took over"))
            self._switched[index].set()
            self._switched[index] = asyncio.Event()
            self._watch(index)  # the old primary may come back as the new standby

        task = asyncio.get_running_loop().create_task(watch())
        self._watches.add(task)
        task.add_done_callback(self._watches.discard)

    async def _hello(self, conn: Connection) -> dict[str, Any]:
        reply = await conn.request(Op.HELLO, options={"role": self.config.role},
                                   timeout=self.config.connect_timeout, attempts=1)
        conn.server_id = reply.info["sid"]
        return reply.info

    async def _heartbeat_loop(self) -> None:
        interval = self.config.heartbeat_interval
        while True:
            await asyncio.sleep(interval)
            for conn in self._connections:
                with contextlib.suppress(ZpsError):
                    await conn.request(Op.HEARTBEAT, timeout=interval * 3, attempts=1)

    async def close(self) -> None:
        """Say goodbye to every server (best effort) and close all sockets."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError, ZpsError):
                await self._heartbeat
            self._heartbeat = None
        for conn in self._connections:
            if conn.server_id is not None:
                with contextlib.suppress(ZpsError):
                    await conn.request(Op.BYE, timeout=1.0, attempts=1)
        for task in list(self._watches):
            task.cancel()
        await asyncio.gather(*self._watches, return_exceptions=True)
        for conn in [*self._connections, *(c for c in self._standbys if c is not None)]:
            await conn.close()
        self._connections = []
        self._standbys = []
        if self._context is not None:
            self._context.term()
            self._context = None

    # ------------------------------------------------------------ public API

    async def init(self, tensors: Mapping[str, Any],
                   optimizer: Mapping[str, Any] | None = None) -> Arrays:
        """Create tables from initial values (the first init wins) and return current values.

        Every worker may call it with the same names and shapes; a later call returns what
        the servers hold now. Raises ``ShapeMismatchError`` if a table exists with another
        shape or dtype. With ``optimizer`` (``{"name": "sgd", "lr": 0.1, "momentum": 0.9}``
        or ``{"name": "adam", "lr": 1e-3}``) the new tables take gradients and the server
        runs that optimizer on them.
        """
        layout, arrays = self._session.plan_init(tensors)
        current = await self._call(Op.INIT, layout, list(arrays), arrays,
                                   Session.init_options(optimizer))
        self._session.layout = layout  # only once the servers hold every table
        return current

    async def pull(self, names: Iterable[str] | None = None) -> Arrays:
        """The current value of the named tables (all by default), as fresh arrays.

        In sync mode, a pull after this worker's push for round r waits for round r to
        close and returns the parameters after it.
        """
        wanted = self._session.wanted(names)
        return await self._call(Op.PULL, self._session.need_layout(), wanted)

    async def push(self, deltas: Mapping[str, Any], *, loss: float | None = None,
                   weight: float | None = None) -> None:
        """Send updates (deltas) for the named tables; the servers combine and apply them.

        ``loss`` (this worker's training loss) feeds the ``loss`` rate rule; ``weight``
        (e.g. the batch size) the ``weighted`` aggregation rule.
        """
        arrays = self._session.deltas(deltas)
        await self._call(Op.PUSH, self._session.need_layout(), list(arrays), arrays,
                         Session.push_options(loss, weight))

    async def push_pull(self, deltas: Mapping[str, Any], *, loss: float | None = None,
                        weight: float | None = None) -> Arrays:
        """Push deltas and return the named tables' values after they were applied."""
        arrays = self._session.deltas(deltas)
        return await self._call(Op.PUSH_PULL, self._session.need_layout(), list(arrays), arrays,
                                Session.push_options(loss, weight))

    async def stats(self) -> list[dict[str, Any]]:
        """Each server's ``stats``: mode, sequence number, tables, members and counters."""
        replies = await asyncio.gather(
            *(c.request(Op.STATS, timeout=self.config.timeout, attempts=1)
              for c in self._connections)
        )
        return [dict(r.info, address=c.address)
                for r, c in zip(replies, self._connections, strict=True)]

    # ------------------------------------------------------------ internals

    async def _call(self, op: Op, layout: Layout, names: list[str],
                    arrays: Mapping[str, np.ndarray] | None = None,
                    options: dict[str, Any] | None = None) -> Arrays:
        """Send a call's messages concurrently and gather the returned values."""
        if op in (Op.PULL, Op.PUSH_PULL) and self._session.pull_codec is not None:
            async with self._delta_lock:  # a delta applies to the copy the previous one left
                return await self._call_now(op, layout, names, arrays, options)
        return await self._call_now(op, layout, names, arrays, options)

    async def _call_now(self, op: Op, layout: Layout, names: list[str],
                        arrays: Mapping[str, np.ndarray] | None,
                        options: dict[str, Any] | None) -> Arrays:
        messages = self._session.messages(op, layout, names, arrays, options)
        out = {} if op == Op.PUSH else self._session.outputs(layout, names)
        assert self._ids is not None, "connect() first"
        rids = [self._ids.next() for _ in messages]  # kept on resends: applied at most once
        try:
            await self._send_all(messages, out, rids)
        except RejectedError as exc:
            if exc.code != "not_registered":
                raise
            # Declared dead while alive: register again and send the call once more.
            log.warning("%s; registering again", exc)
            self._session.hello = list(
                await asyncio.gather(*(self._hello(c) for c in self._connections)))
            await self._send_all(messages, out, rids)
        return out

    async def _send_all(self, messages: list[Message], out: Arrays, rids: list[int]) -> None:
        if len(messages) == 1:  # the common case: no task to schedule
            await self._send(messages[0], out, rids[0])
        else:
            await asyncio.gather(*(self._send(m, out, r)
                                   for m, r in zip(messages, rids, strict=True)))

    async def _send(self, message: Message, out: Arrays, rid: int) -> None:
        if self._limit is None:
            raise ZpsError("the client is not connected: use `async with` or call connect()")
        async with self._limit:
            while True:
                conn = self._connections[message.server]
                try:
                    reply = await conn.request(
                        message.op, tensors=message.tensors, buffers=message.buffers,
                        names=message.names, options=message.options,
                        encoded=message.encoded, timeout=self.config.timeout,
                        attempts=1 + self.config.retries, request_id=rid,
                    )
                    break
                except Switched:
                    continue  # the standby took over: the same request, sent there
                except RejectedError as exc:
                    if exc.code not in HANDOVER_ERRORS or \
                            self._standbys[message.server] is None:
                        raise
                    # The primary is stopping, or this is not the primary yet: wait for
                    # the standby to take over, then send the same request there.
                    switched = self._switched[message.server]
                    try:
                        await asyncio.wait_for(switched.wait(), self.config.timeout)
                    except TimeoutError:
                        raise exc from None
        if message.op != Op.PUSH:
            self._session.scatter(reply, message, out)
