"""``Client``: the blocking worker library for ordinary training loops.

A thin shell around the client engine: plain (blocking-API) DEALER sockets, one per
server, waited on with ``zmq.Poller``. No event loop on the hot path, so a small push
costs little more than a raw ZeroMQ round trip, and it works the same inside a running
event loop (Jupyter). A small thread sends heartbeats while the training loop computes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from types import ModuleType
from typing import Any, Literal, overload

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
from zps.protocol import Limits, Op, Request, encode_request
from zps.transport import open_socket, recv_waiting, send_frames, set_option

log = logging.getLogger("zps.client")


class Client(ClientBase):
    """Blocking zps client with the same methods as ``AsyncClient``.

    ::

        with zps.Client(["tcp://127.0.0.1:5570"]) as ps:
            ps.init({"w": w0})
            ps.push_pull({"w": dw})

    Constructing it connects to every server (``ServerUnreachable`` if one does not answer
    within ``connect_timeout``). Each request is resent after ``timeout`` seconds, up to
    ``retries`` times, with the same id (a push is applied once); then ``ServerUnreachable``.
    Use a ``Client`` from one thread at a time. ``close()`` says goodbye and frees everything;
    a call after it raises ``ClosedError``.
    """

    def __init__(self, servers: str | Sequence[str], config: ClientConfig | None = None,
                 **overrides: Any) -> None:
        self._engine = Engine(servers, config, **overrides)
        self._curve = client_curve(self.config.curve_server_key, self.config.curve_key)
        self._context = zmq.Context()
        self._poller = zmq.Poller()
        self._sockets: list[zmq.Socket | None] = []
        self._heartbeats: _Heartbeats | None = None
        self._closed = False
        try:
            try:
                self._connect()
            except Regroup as regroup:  # servers run as --procs groups: use every process
                self._drop_sockets()
                self._engine = regroup_engine(self._engine, regroup)
                self._connect()
        except BaseException:
            self._close_sockets()
            raise
        if self.config.heartbeat_interval > 0:
            self._heartbeats = _Heartbeats([a for a in self._engine.endpoints if a],
                                           self.client_id, self.config.heartbeat_interval,
                                           self._curve)

    def _connect(self) -> None:
        """A DEALER per endpoint, and the hellos (``Regroup`` for --procs groups)."""
        self._rcvtimeo = -1  # the one socket's receive timeout (ms); new sockets: forever
        for address in self._engine.endpoints:
            self._sockets.append(self._dealer(address) if address else None)
        self._endpoint_of = {s: i for i, s in enumerate(self._sockets) if s is not None}
        watch = HandshakeWatch({a: s for a, s in zip(self._engine.endpoints, self._sockets,
                                                     strict=True) if s is not None},
                               self._curve)
        try:
            self._run(self._engine.connect(time.monotonic()))
        except ServerUnreachable as exc:
            raise watch.explained(exc) from None
        finally:
            watch.close()

    def _drop_sockets(self) -> None:
        for sock in self._sockets:
            if sock is not None:
                self._poller.unregister(sock)
                sock.close(linger=0)
        self._sockets = []

    def _dealer(self, address: str) -> zmq.Socket:
        sock = open_socket(self._context, zmq.DEALER, address, **self._curve)
        self._poller.register(sock, zmq.POLLIN)
        return sock

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ public API

    def init(self, tensors: Mapping[str, Any],
             optimizer: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
        """See ``AsyncClient.init``."""
        return self._call(self._init_call(tensors, optimizer))  # type: ignore[no-any-return]

    @overload
    def pull(self, names: Iterable[str] | None = None, *,
             out: Mapping[str, Any] | None = None, device: str | ModuleType | None = None,
             wait: Literal[True] = True) -> dict[str, np.ndarray]: ...

    @overload
    def pull(self, names: Iterable[str] | None = None, *,
             out: Mapping[str, Any] | None = None, device: str | ModuleType | None = None,
             wait: Literal[False]) -> Handle: ...

    def pull(self, names: Iterable[str] | None = None, *,
             out: Mapping[str, Any] | None = None, device: str | ModuleType | None = None,
             wait: bool = True) -> dict[str, np.ndarray] | Handle:
        """See ``AsyncClient.pull``. ``wait=False`` returns a ``Handle`` at once."""
        if self._needs_tables(names if names is not None or out is None else list(out)):
            self._call(self._learn_call())
        return self._call_or_handle(self._pull_call(names, out, device), wait)

    @overload
    def push(self, deltas: Mapping[str, Any], *, loss: float | None = None,
             weight: float | None = None, wait: Literal[True] = True) -> None: ...

    @overload
    def push(self, deltas: Mapping[str, Any], *, loss: float | None = None,
             weight: float | None = None, wait: Literal[False]) -> Handle: ...

    def push(self, deltas: Mapping[str, Any], *, loss: float | None = None,
             weight: float | None = None, wait: bool = True) -> Handle | None:
        """See ``AsyncClient.push``. ``wait=False`` returns a ``Handle`` at once (the
        deltas' arrays are sent from where they are: leave them unchanged until then)."""
        return self._call_or_handle(  # type: ignore[no-any-return]
            self._push_call(Op.PUSH, deltas, loss, weight), wait)

    @overload
    def push_pull(self, deltas: Mapping[str, Any], *, loss: float | None = None,
                  weight: float | None = None, out: Mapping[str, Any] | None = None,
                  wait: Literal[True] = True) -> dict[str, np.ndarray]: ...

    @overload
    def push_pull(self, deltas: Mapping[str, Any], *, loss: float | None = None,
                  weight: float | None = None, out: Mapping[str, Any] | None = None,
                  wait: Literal[False]) -> Handle: ...

    def push_pull(self, deltas: Mapping[str, Any], *, loss: float | None = None,
                  weight: float | None = None, out: Mapping[str, Any] | None = None,
                  wait: bool = True) -> dict[str, np.ndarray] | Handle:
        """See ``AsyncClient.push_pull``. ``wait=False`` returns a ``Handle`` at once."""
        return self._call_or_handle(self._push_call(Op.PUSH_PULL, deltas, loss, weight, out),
                                    wait)

    def init_rows(self, name: str, dim: int = 64, dtype: str = "float32", init: str = "normal:0.01",
                  optimizer: Mapping[str, Any] | None = None, admit_after: int = 1,
                  evict_after: float | None = None, max_rows: int | None = None) -> None:
        """See ``AsyncClient.init_rows``."""
        self._check_row_name(self.tables(), name)
        self._call(self._init_rows_call(name, dim, dtype, init, optimizer, admit_after,
                                        evict_after, max_rows))

    def pull_rows(self, name: str, ids: Any, *, wait: bool = True) -> Any:
        """See ``AsyncClient.pull_rows``. ``wait=False`` returns a ``Handle`` at once."""
        self._learn_rows(name)
        return self._call_or_handle(self._pull_rows_call(name, ids), wait)

    def push_rows(self, name: str, ids: Any, updates: Any, *, loss: float | None = None,
                  weight: float | None = None, wait: bool = True) -> Any:
        """See ``AsyncClient.push_rows``. ``wait=False`` returns a ``Handle`` at once."""
        self._learn_rows(name)
        return self._call_or_handle(self._push_rows_call(
            name, ids, updates, None, loss, weight, pull=False), wait)

    def push_pull_rows(self, name: str, ids: Any, updates: Any, pull_ids: Any | None = None,
                       *, loss: float | None = None, weight: float | None = None,
                       wait: bool = True) -> Any:
        """See ``AsyncClient.push_pull_rows``. ``wait=False`` returns a ``Handle`` at
        once."""
        self._learn_rows(name)
        return self._call_or_handle(self._push_rows_call(
            name, ids, updates, pull_ids, loss, weight, pull=True), wait)

    def tables(self) -> list[dict[str, Any]]:
        """See ``AsyncClient.tables``."""
        return self._call(self._tables_call())  # type: ignore[no-any-return]

    def _learn_rows(self, name: str) -> None:
        if not self._knows_rows(name):
            self.tables()

    def stats(self) -> list[dict[str, Any]]:
        """See ``AsyncClient.stats``."""
        return self._call(self._stats_call())  # type: ignore[no-any-return]

    def close(self) -> None:
        """Say goodbye to the servers (best effort), close the sockets, stop the heartbeats."""
        if self._closed:
            return
        if self._heartbeats is not None:
            self._heartbeats.stop()
        self._engine.begin_close()
        with contextlib.suppress(ZpsError):
            self._call(self._bye_call())
        self._engine.close()
        self._close_sockets()

    # ------------------------------------------------------------ internals

    def _call(self, call: Call) -> Any:
        if self._closed:
            raise ClosedError("this zps.Client is closed")
        self._engine.start(call, time.monotonic())
        return self._run(call)

    def _call_or_handle(self, call: Call, wait: bool) -> Any:
        if wait:
            return self._call(call)
        if self._closed:
            raise ClosedError("this zps.Client is closed")
        self._engine.start(call, time.monotonic())
        self._flush()
        return Handle(self, call)

    def progress(self) -> None:
        """Take in the replies that have arrived and send what may go now, without
        waiting (calls started with ``wait=False`` advance while the caller computes)."""
        if self._closed:
            return
        engine = self._engine
        now = time.monotonic()
        for sock, _ in self._poller.poll(0):
            read_replies(sock, self._endpoint_of[sock], engine, self.config.limits, now)
        deadline = engine.next_deadline()
        if deadline is not None and now >= deadline:
            engine.expire(now)
        self._flush()

    def _run(self, call: Call) -> Any:
        """Drive the engine until ``call`` is done; its result (or its error, raised)."""
        engine = self._engine
        limits = self.config.limits
        self._flush()
        while not call.done:
            deadline = engine.next_deadline()
            wait = 1000 if deadline is None else max(0, math.ceil(
                (deadline - time.monotonic()) * 1000))
            self._wait(wait, limits)
            if deadline is not None and not call.done:
                now = time.monotonic()
                if now >= deadline:
                    engine.expire(now)
            self._flush()
        return call.result()

    def _wait(self, milliseconds: int, limits: Limits) -> None:
        """Wait up to ``milliseconds`` for replies and take in those that came. With one
        server, a blocking receive (fewer system calls than a poll)."""
        engine = self._engine
        if len(self._endpoint_of) == 1:
            sock, endpoint = next(iter(self._endpoint_of.items()))
            if milliseconds != self._rcvtimeo:
                set_option(sock, zmq.RCVTIMEO, milliseconds)
                self._rcvtimeo = milliseconds
            try:
                first = recv_waiting(sock)
            except zmq.Again:
                return
            read_replies(sock, endpoint, engine, limits, time.monotonic(), first)
            return
        for sock, _ in self._poller.poll(milliseconds):
            read_replies(sock, self._endpoint_of[sock], engine, limits, time.monotonic())

    def _flush(self) -> None:
        for endpoint, frames in self._engine.take_sends():
            sock = self._sockets[endpoint]
            if sock is not None:
                with contextlib.suppress(zmq.Again):  # queue full: counts as a lost attempt
                    send_frames(sock, frames)

    def _close_sockets(self) -> None:
        self._closed = True
        for sock in self._sockets:
            if sock is not None:
                sock.close(linger=0)
        self._context.term()


class Handle:
    """A call started with ``wait=False`` (as ps-lite's timestamps): ``wait()`` blocks
    until it is done and returns its value (or raises its error); ``done()`` says whether
    it is, without blocking. Calls finish in any order; several may be in flight."""

    __slots__ = ("_call", "_client")

    def __init__(self, client: Client, call: Call) -> None:
        self._client = client
        self._call = call

    def done(self) -> bool:
        """True once the call has finished (its replies are in, or it failed)."""
        if not self._call.done:
            self._client.progress()
        return self._call.done

    def wait(self) -> Any:
        """Block until the call finishes; its value (``push``: None), or its error."""
        if not self._call.done:
            if self._client._closed:
                raise ClosedError("this zps.Client is closed")
            self._client._run(self._call)
        return self._call.result()


class _Heartbeats:
    """A daemon thread that sends this client's heartbeats from sockets of its own."""

    # Ids far above the client's own requests: heartbeats change nothing on a server.
    FIRST_ID = 1 << 62

    def __init__(self, addresses: list[str], client_id: str, interval: float,
                 curve: dict[str, int | bytes]) -> None:
        self._addresses = addresses
        self._curve = curve
        self._client_id = client_id
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zps-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with zmq.Context() as ctx:
            sockets = [open_socket(ctx, zmq.DEALER, a, SNDHWM=4, **self._curve)
                       for a in self._addresses]
            rid = self.FIRST_ID
            while not self._stop.wait(self._interval):
                rid += 1
                frames = encode_request(Request(Op.HEARTBEAT, self._client_id, rid))
                for sock in sockets:
                    while sock.poll(0):  # answers are not needed: drop them
                        sock.recv_multipart()
                    # Server unreachable for now: the main path will report it.
                    with contextlib.suppress(zmq.Again):
                        sock.send_multipart(frames, zmq.NOBLOCK)
            for sock in sockets:
                sock.close(linger=0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
