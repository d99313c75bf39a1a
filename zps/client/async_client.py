"""``AsyncClient``: the asyncio worker library. ``Client`` wraps it for blocking code."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import zmq

from zps.client.connection import Connection, _Counter
from zps.client.placement import RESERVED, Layout, Part, TableSpec, plan
from zps.config import ClientConfig
from zps.errors import ConfigError, ServerUnreachable, ShapeMismatchError, ZpsError
from zps.protocol import DTYPES, Op, Reply, TensorMeta

log = logging.getLogger("zps.client")

Arrays = dict[str, np.ndarray]


def _server_list(servers: str | Sequence[str]) -> list[str]:
    found = [s.strip() for s in ([servers] if isinstance(servers, str) else servers)]
    found = [s for part in found for s in part.split(",") if s.strip()]
    if not found:
        raise ConfigError("no server address given; pass e.g. ['tcp://127.0.0.1:5570']")
    return found


class AsyncClient:
    """Push and pull parameters held by one or more zps servers, from asyncio code.

    ``async with AsyncClient(["tcp://127.0.0.1:5570"]) as ps: ...`` connects to every
    server (``ServerUnreachable`` if one does not answer within ``connect_timeout``),
    registers as a worker, and on exit says goodbye and closes its sockets.
    Table placement is learnt from ``init``, which every worker calls with the same shapes.
    """

    def __init__(
        self,
        servers: str | Sequence[str],
        config: ClientConfig | None = None,
        **overrides: Any,
    ) -> None:
        self.servers = _server_list(servers)
        self.config = replace(config or ClientConfig(), **overrides)
        self.client_id = self.config.client_id or f"c-{uuid.uuid4().hex[:12]}"
        self.layout: Layout | None = None
        self._context: zmq.Context | None = None
        self._connections: list[Connection] = []
        self._limit: asyncio.Semaphore | None = None
        self._heartbeat: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def mode(self) -> str:
        """The consistency mode the servers run (``sync`` or ``async``)."""
        return str(self._connections[0].info.get("mode", "")) if self._connections else ""

    async def connect(self) -> None:
        """Open a DEALER per server and say hello to each (registers this worker)."""
        self._context = zmq.Context()
        ids = _Counter()
        self._limit = asyncio.Semaphore(self.config.max_inflight)
        self._connections = [
            Connection(self._context, addr, self.client_id, ids) for addr in self.servers
        ]
        try:
            await asyncio.gather(*(self._hello(c) for c in self._connections))
        except BaseException:
            await self.close()
            raise
        if self.config.heartbeat_interval > 0:
            self._heartbeat = asyncio.get_running_loop().create_task(self._heartbeat_loop())

    async def _hello(self, conn: Connection) -> None:
        try:
            reply = await conn.request(
                Op.HELLO, options={"role": self.config.role},
                timeout=self.config.connect_timeout, attempts=1,
            )
        except ServerUnreachable:
            raise ServerUnreachable(
                f"could not reach a zps server at {conn.address} within "
                f"{self.config.connect_timeout:g} s; start one with "
                f"`zps-server --bind {conn.address}` or fix the address"
            ) from None
        conn.server_id = reply.info["sid"]
        conn.info = reply.info

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

    async def init(self, tensors: Mapping[str, Any]) -> Arrays:
        """Create tables from initial values (the first init wins) and return current values.

        Every worker may call it with the same names and shapes; a later call returns what
        the servers hold now. Raises ``ShapeMismatchError`` if a table exists with another
        shape or dtype.
        """
        arrays = {name: _as_table_array(name, value) for name, value in tensors.items()}
        specs = {name: TableSpec(a.shape, a.dtype) for name, a in arrays.items()}
        if self.layout is not None:
            specs = {**self.layout.specs, **specs}
        layout = plan(specs, len(self._connections), self.config.chunk_bytes)
        current = await self._exchange(Op.INIT, arrays, layout)
        self.layout = layout  # only once the servers hold every table
        return current

    async def pull(self, names: Iterable[str] | None = None) -> Arrays:
        """The current value of the named tables (all by default), as fresh arrays.

        In sync mode, a pull after this worker's push for round r waits for round r to
        close and returns the parameters after it.
        """
        layout = self._need_layout()
        wanted = list(layout.specs) if names is None else [self._known(n) for n in names]
        groups = self._group(list(layout.parts_of(wanted)))
        out = {n: np.empty(layout.specs[n].shape, layout.specs[n].dtype) for n in wanted}
        await self._send_all(Op.PULL, groups, {}, out)
        return out

    async def push(self, deltas: Mapping[str, Any]) -> None:
        """Send updates (deltas) for the named tables; the servers combine and apply them."""
        await self._exchange(Op.PUSH, self._deltas(deltas))

    async def push_pull(self, deltas: Mapping[str, Any]) -> Arrays:
        """Push deltas and return the named tables' values after they were applied."""
        return await self._exchange(Op.PUSH_PULL, self._deltas(deltas))

    async def stats(self) -> list[dict[str, Any]]:
        """Each server's ``stats``: mode, sequence number, tables, members and counters."""
        replies = await asyncio.gather(
            *(c.request(Op.STATS, timeout=self.config.timeout, attempts=1)
              for c in self._connections)
        )
        return [dict(r.info, address=c.address)
                for r, c in zip(replies, self._connections, strict=True)]

    # ------------------------------------------------------------ internals

    def _need_layout(self) -> Layout:
        if self.layout is None:
            raise ZpsError(
                "call init() first: the client learns the tables' shapes and where they live "
                "from init(), which every worker calls with the same initial arrays"
            )
        return self.layout

    def _known(self, name: str) -> str:
        if name not in self._need_layout().specs:
            known = ", ".join(sorted(self._need_layout().specs)) or "none"
            raise ZpsError(f"unknown table {name!r}; tables given to init(): {known}")
        return name

    def _deltas(self, deltas: Mapping[str, Any]) -> Arrays:
        layout = self._need_layout()
        arrays = {}
        for name, value in deltas.items():
            spec = layout.specs[self._known(name)]
            array = np.ascontiguousarray(value, dtype=spec.dtype)
            if array.shape != spec.shape:
                raise ShapeMismatchError(
                    "shape_mismatch",
                    f"delta for {name!r} has shape {array.shape}, the table has {spec.shape}",
                )
            arrays[name] = array
        return arrays

    async def _exchange(self, op: Op, arrays: Arrays, layout: Layout | None = None) -> Arrays:
        """Send ``arrays`` part by part and gather the returned values (init, push_pull)."""
        layout = layout or self._need_layout()
        groups = self._group(list(layout.parts_of(list(arrays))))
        out = {} if op == Op.PUSH else {
            n: np.empty(a.shape, a.dtype) for n, a in arrays.items()
        }
        await self._send_all(op, groups, arrays, out)
        return out

    async def _send_all(
        self, op: Op, groups: list[list[Part]], arrays: Mapping[str, np.ndarray], out: Arrays
    ) -> None:
        """Send every message concurrently (directly when there is one: no task to schedule)."""
        if len(groups) == 1:
            await self._send(op, groups[0], arrays, out)
        else:
            await asyncio.gather(*(self._send(op, parts, arrays, out) for parts in groups))

    def _group(self, parts: list[Part]) -> list[list[Part]]:
        """Batch parts into messages: one server each, at most ``chunk_bytes`` (or one part)."""
        groups: list[list[Part]] = []
        open_group: dict[int, tuple[list[Part], int]] = {}
        for part in parts:
            group, size = open_group.get(part.server, ([], 0))
            if group and size + part.nbytes > self.config.chunk_bytes:
                groups.append(group)
                group, size = [], 0
            group.append(part)
            open_group[part.server] = (group, size + part.nbytes)
        groups.extend(g for g, _ in open_group.values() if g)
        return groups

    async def _send(
        self, op: Op, parts: list[Part], arrays: Mapping[str, np.ndarray], out: Arrays
    ) -> None:
        conn = self._connections[parts[0].server]
        tensors: list[TensorMeta] = []
        buffers: list[np.ndarray] = []
        if op != Op.PULL:
            for part in parts:
                piece = arrays[part.table]
                piece = piece if part.whole else piece[part.start:part.stop]
                tensors.append(TensorMeta.of(part.key, piece))
                buffers.append(piece)
        names = [p.key for p in parts] if op == Op.PULL else []
        assert self._limit is not None
        async with self._limit:
            reply = await conn.request(
                op, tensors=tensors, buffers=buffers, names=names,
                timeout=self.config.timeout, attempts=1 + self.config.retries,
            )
        if op != Op.PUSH:
            _scatter(reply, parts, out)


def _scatter(reply: Reply, parts: list[Part], out: Arrays) -> None:
    """Copy each returned part into its place in the output arrays."""
    got = reply.arrays()
    for part in parts:
        value = got[part.key]
        if part.whole:
            out[part.table][...] = value
        else:
            out[part.table][part.start:part.stop] = value


def _as_table_array(name: str, value: Any) -> np.ndarray:
    if not isinstance(name, str) or not name or any(c in name for c in RESERVED):
        raise ConfigError(f"table name {name!r} must be a non-empty string without {RESERVED!r}")
    array = np.ascontiguousarray(value)
    if array.dtype.name not in DTYPES:
        if not np.issubdtype(array.dtype, np.number):
            raise ShapeMismatchError("bad_dtype", f"table {name!r} must hold numbers")
        array = array.astype(np.float32)
    return array
