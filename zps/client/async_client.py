"""``AsyncClient``: the worker library for asyncio code."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import zmq

from zps.client.connection import Connection, RequestIds
from zps.client.placement import Layout
from zps.client.session import Arrays, Message, Session, SessionProperties
from zps.config import ClientConfig
from zps.errors import RejectedError, ZpsError
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

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open a DEALER per server and say hello to each (registers this worker)."""
        self._context = zmq.Context()
        ids = RequestIds()
        self._limit = asyncio.Semaphore(self.config.max_inflight)
        try:
            for addr in self.servers:
                self._connections.append(Connection(self._context, addr, self.client_id, ids))
            replies = await asyncio.gather(*(self._hello(c) for c in self._connections))
        except BaseException:
            await self.close()
            raise
        if self.config.heartbeat_interval > 0:
            self._heartbeat = asyncio.get_running_loop().create_task(self._heartbeat_loop())

        self._session.hello = list(replies)

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
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        for conn in self._connections:
            if conn.server_id is not None:
                with contextlib.suppress(ZpsError):
                    await conn.request(Op.BYE, timeout=1.0, attempts=1)
        for conn in self._connections:
            await conn.close()
        self._connections = []
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
        try:
            await self._send_all(messages, out)
        except RejectedError as exc:
            if exc.code != "not_registered":
                raise
            # Declared dead while alive: register again and send the call once more.
            log.warning("%s; registering again", exc)
            self._session.hello = list(
                await asyncio.gather(*(self._hello(c) for c in self._connections)))
            await self._send_all(messages, out)
        return out

    async def _send_all(self, messages: list[Message], out: Arrays) -> None:
        if len(messages) == 1:  # the common case: no task to schedule
            await self._send(messages[0], out)
        else:
            await asyncio.gather(*(self._send(m, out) for m in messages))

    async def _send(self, message: Message, out: Arrays) -> None:
        conn = self._connections[message.server]
        if self._limit is None:
            raise ZpsError("the client is not connected: use `async with` or call connect()")
        async with self._limit:
            reply = await conn.request(
                message.op, tensors=message.tensors, buffers=message.buffers,
                names=message.names, options=message.options, encoded=message.encoded,
                timeout=self.config.timeout, attempts=1 + self.config.retries,
            )
        if message.op != Op.PUSH:
            self._session.scatter(reply, message, out)
