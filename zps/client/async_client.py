"""``AsyncClient``: the worker library for asyncio code.

A thin shell around the same client engine as the blocking ``Client``: DEALER sockets
watched by the event loop, one timer for the engine's next deadline, one future per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np
import zmq

from zps.client.api import ClientBase
from zps.client.calls import Call
from zps.client.connect import Regroup, regroup_engine
from zps.client.engine import Engine
from zps.client.wire import read_replies
from zps.config import ClientConfig
from zps.curve import HandshakeWatch, client_curve
from zps.errors import ClosedError, ServerUnreachable, ZpsError
from zps.protocol import Op
from zps.transport import LoopSocket, open_socket

Arrays = dict[str, np.ndarray]


class AsyncClient(ClientBase):
    """Push and pull parameters held by one or more zps servers, from asyncio code.

    ``async with AsyncClient(["tcp://127.0.0.1:5570"]) as ps: ...`` connects to every
    server (``ServerUnreachable`` if one does not answer within ``connect_timeout``),
    registers as a worker, and on exit says goodbye and closes its sockets. Table placement
    is learnt from ``init``, which every worker calls with the same shapes. Requests time
    out after ``timeout`` seconds and are resent ``retries`` times with the same request id
    (a push is applied once); a cancelled call is abandoned (its late replies are dropped).
    Any method used after ``close()`` raises ``ClosedError``.
    """

    def __init__(self, servers: str | Sequence[str], config: ClientConfig | None = None,
                 **overrides: Any) -> None:
        self._engine = Engine(servers, config, **overrides)
        self._context: zmq.Context | None = None
        self._sockets: list[LoopSocket | None] = []
        self._curve: dict[str, int | bytes] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._flush_due = False  # a flush is scheduled for the end of this turn
        self._heartbeat: asyncio.Task[None] | None = None
        self._closed = False
        self._connected = False

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open a DEALER per server and say hello to each (registers this worker)."""
        if self._closed:
            raise ClosedError("this zps.AsyncClient is closed")
        self._context = zmq.Context()
        try:
            self._curve = client_curve(self.config.curve_server_key, self.config.curve_key)
            try:
                await self._connect()
            except Regroup as regroup:  # servers run as --procs groups: use every process
                for sock in self._sockets:
                    if sock is not None:
                        sock.close()
                self._sockets = []
                self._engine = regroup_engine(self._engine, regroup)
                await self._connect()
        except BaseException:
            await self.close()
            raise
        self._connected = True
        if self.config.heartbeat_interval > 0:
            self._heartbeat = asyncio.get_running_loop().create_task(self._heartbeat_loop())

    async def _connect(self) -> None:
        """A DEALER per endpoint, and the hellos (``Regroup`` for --procs groups)."""
        for endpoint, address in enumerate(self._engine.endpoints):
            self._sockets.append(self._dealer(endpoint, address) if address else None)
        watch = HandshakeWatch({a: s.socket for a, s in zip(
            self._engine.endpoints, self._sockets, strict=True) if s is not None},
            self._curve)
        try:
            await self._run(self._engine.connect(time.monotonic()))
        except ServerUnreachable as exc:
            raise watch.explained(exc) from None
        finally:
            watch.close()

    def _dealer(self, endpoint: int, address: str) -> LoopSocket:
        assert self._context is not None
        limits = self.config.limits

        def readable(sock: zmq.Socket) -> None:
            read_replies(sock, endpoint, self._engine, limits, time.monotonic())
            self._flush()

        return LoopSocket(open_socket(self._context, zmq.DEALER, address, **self._curve),
                          on_readable=readable)

    async def close(self) -> None:
        """Say goodbye to every server (best effort) and close all sockets."""
        if self._closed:
            return
        self._closed = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        if self._connected:
            self._engine.begin_close()
            with contextlib.suppress(ZpsError):
                await self._run(self._bye_call(), start=True)
        self._engine.close()
        if self._timer is not None:
            self._timer.cancel()
        for sock in self._sockets:
            if sock is not None:
                sock.close()
        self._sockets = []
        if self._context is not None:
            self._context.term()
            self._context = None

    # ------------------------------------------------------------ public API

    async def init(self, tensors: Mapping[str, Any],
                   optimizer: Mapping[str, Any] | None = None) -> Arrays:
        """Create tables from initial values (the first init wins) and return current values.

        Every worker may call it with the same names and shapes; a later call returns what
        the servers hold now (logged once if they were trained already). Raises
        ``ShapeMismatchError`` if a table exists with another shape or dtype. With
        ``optimizer`` (``{"name": "sgd", "lr": 0.1, "momentum": 0.9}`` or ``{"name":
        "adam", "lr": 1e-3}``) the new tables take gradients and the server runs that
        optimizer on them.
        """
        return await self._call(self._init_call(tensors, optimizer))  # type: ignore[no-any-return]

    async def pull(self, names: Iterable[str] | None = None, *,
                   out: Mapping[str, Any] | None = None,
                   device: str | ModuleType | None = None) -> Arrays:
        """The current value of the named tables (all by default), as fresh arrays, or
        received straight into the arrays of ``out`` (by table name; the tables of
        ``out`` when ``names`` is not given). A client that never called ``init`` (an
        evaluator, ``zps export``) asks the servers which tables they hold first.
        ``device="cuda"`` (or an array module, e.g. ``cupy``) returns arrays on that
        device; device arrays in ``out`` are filled on their device.

        In sync mode, a pull after this worker's push for round r waits for round r to
        close and returns the parameters after it. ``UnknownTableError`` for a table that
        was never given to ``init``.
        """
        if self._needs_tables(names if names is not None or out is None else list(out)):
            await self._call(self._learn_call())
        return await self._call(self._pull_call(names, out, device))  # type: ignore[no-any-return]

    async def push(self, deltas: Mapping[str, Any], *, loss: float | None = None,
                   weight: float | None = None) -> None:
        """Send updates (deltas) for the named tables; the servers combine and apply them.
        Deltas may be NumPy arrays or device arrays (CuPy, CUDA torch tensors): those are
        compressed on their device and only the encoded bytes are copied to the host.

        ``loss`` (this worker's training loss) feeds the ``loss`` rate rule; ``weight``
        (e.g. the batch size) the ``weighted`` aggregation rule.
        """
        await self._call(self._push_call(Op.PUSH, deltas, loss, weight))

    async def push_pull(self, deltas: Mapping[str, Any], *, loss: float | None = None,
                        weight: float | None = None,
                        out: Mapping[str, Any] | None = None) -> Arrays:
        """Push deltas and return the named tables' values after they were applied (into
        the arrays of ``out`` where given, as for ``pull``), on the deltas' device."""
        return await self._call(  # type: ignore[no-any-return]
            self._push_call(Op.PUSH_PULL, deltas, loss, weight, out))

    async def init_rows(self, name: str, dim: int = 64, dtype: str = "float32",
                        init: str = "normal:0.01", optimizer: Mapping[str, Any] | None = None,
                        admit_after: int = 1, evict_after: float | None = None,
                        max_rows: int | None = None) -> None:
        """Create row table ``name`` on every server (idempotent, like ``init``): rows of
        ``dim`` values keyed by int64 ids, read as their initial value (``zeros``,
        ``normal:STD``, ``uniform:A``, a deterministic function of table and id) until
        stored. ``optimizer`` (``sgd``, ``adagrad``, ``adam``, ``ftrl`` with ``lr`` and
        their settings) makes pushes gradients; ``admit_after`` stores a row on its K-th
        push; ``evict_after`` seconds and ``max_rows`` bound the rows kept. Raises
        ``ShapeMismatchError`` if the table exists with other settings, ``ConfigError`` for
        bad settings."""
        self._check_row_name(await self.tables(), name)
        await self._call(self._init_rows_call(name, dim, dtype, init, optimizer, admit_after,
                                              evict_after, max_rows))

    async def pull_rows(self, name: str, ids: Any) -> np.ndarray:
        """The rows of ``ids`` (int64, any shape): an array of ``ids.shape + (dim,)``. Rows
        never pushed read as their initial value; a pull creates no row."""
        await self._learn_rows(name)
        return await self._call(self._pull_rows_call(name, ids))  # type: ignore[no-any-return]

    async def push_rows(self, name: str, ids: Any, updates: Any, *, loss: float | None = None,
                        weight: float | None = None) -> None:
        """Add ``updates`` (``ids.shape + (dim,)``; gradients with a row optimizer) to the
        rows of ``ids``; the updates of repeated ids are summed first."""
        await self._learn_rows(name)
        await self._call(self._push_rows_call(name, ids, updates, None, loss, weight,
                                              pull=False))

    async def push_pull_rows(self, name: str, ids: Any, updates: Any,
                             pull_ids: Any | None = None, *, loss: float | None = None,
                             weight: float | None = None) -> np.ndarray:
        """Push row updates and pull the rows of ``pull_ids`` (by default ``ids``) after
        them, in one round trip."""
        await self._learn_rows(name)
        return await self._call(self._push_rows_call(  # type: ignore[no-any-return]
            name, ids, updates, pull_ids, loss, weight, pull=True))

    async def tables(self) -> list[dict[str, Any]]:
        """The tables the servers hold: name, kind, dtype, shape, version (row tables:
        their settings, rows, bytes)."""
        return await self._call(self._tables_call())  # type: ignore[no-any-return]

    async def _learn_rows(self, name: str) -> None:
        if not self._knows_rows(name):
            await self.tables()

    async def stats(self) -> list[dict[str, Any]]:
        """Each server's ``stats``: mode, sequence number, tables, members and counters."""
        return await self._call(self._stats_call())  # type: ignore[no-any-return]

    # ------------------------------------------------------------ internals

    async def _call(self, call: Call) -> Any:
        if self._closed:
            raise ClosedError("this zps.AsyncClient is closed")
        if not self._connected:
            raise ZpsError("the client is not connected: use `async with` or call connect()")
        return await self._run(call, start=True)

    async def _run(self, call: Call, start: bool = False) -> Any:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def done(_: Call) -> None:
            if not future.done():
                future.set_result(None)

        call.callback = done
        if start:
            self._engine.start(call, time.monotonic())
        if call.done:
            return call.result()
        self._flush_soon()
        try:
            await future
        except asyncio.CancelledError:
            self._engine.finish_call(call, ClosedError("the call was cancelled"))
            if not self._closed:
                self._flush()  # what waited behind it goes out now
            raise
        return call.result()

    def _flush_soon(self) -> None:
        """Send after the callbacks already due in this turn of the loop: calls started
        together (``asyncio.gather``) leave as one message per server."""
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_due = False
        for endpoint, frames in self._engine.take_sends():
            sock = self._sockets[endpoint] if endpoint < len(self._sockets) else None
            if sock is not None:
                with contextlib.suppress(zmq.Again):  # queue full: a lost attempt
                    sock.send(frames)
        self._arm()

    def _arm(self) -> None:
        deadline = self._engine.next_deadline()
        if deadline is None or deadline >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = asyncio.get_running_loop().call_later(
            max(0.0, deadline - time.monotonic()), self._expire)

    def _expire(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        if self._closed and not self._sockets:
            return
        self._engine.expire(time.monotonic())
        self._flush()

    async def _heartbeat_loop(self) -> None:
        interval = self.config.heartbeat_interval
        while True:
            await asyncio.sleep(interval)
            for endpoint, frames in self._engine.heartbeats():
                sock = self._sockets[endpoint] if endpoint < len(self._sockets) else None
                if sock is not None:
                    with contextlib.suppress(zmq.Again):
                        sock.send(frames)
