"""``Client``: the blocking facade over ``AsyncClient`` for ordinary training loops.

In a plain thread (the usual training loop) the client owns a private event loop and runs
each call on it in the caller's thread: no thread hop on the hot path. A small heartbeat
thread with its own sockets keeps the worker alive on the servers while the loop computes.
Where an event loop is already running in the caller's thread (Jupyter), the private loop
runs in a daemon thread instead and calls are handed to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np
import zmq

from zps.client.async_client import AsyncClient
from zps.config import ClientConfig
from zps.errors import ClosedError
from zps.protocol import Op, Request, encode_request
from zps.runtime import new_event_loop

T = TypeVar("T")


class _InlineLoop:
    """Runs coroutines on a private loop in the calling thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.loop.close()


class _ThreadLoop:
    """Runs coroutines on a private loop in a daemon thread (when the caller has a loop)."""

    def __init__(self) -> None:
        self.loop = new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="zps-client",
                                        daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class _Heartbeats:
    """A daemon thread that sends this client's heartbeats from sockets of its own."""

    # Ids far above the client's own requests, so the two never meet in a dedup window.
    FIRST_ID = 1 << 62

    def __init__(self, addresses: list[str], client_id: str, interval: float) -> None:
        self._addresses = addresses
        self._client_id = client_id
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zps-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with zmq.Context() as ctx:
            sockets = []
            for address in self._addresses:
                sock = ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.SNDHWM, 4)
                sock.connect(address)
                sockets.append(sock)
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


class Client:
    """Blocking zps client with the same methods as ``AsyncClient``.

    ::

        with zps.Client(["tcp://127.0.0.1:5570"]) as ps:
            ps.init({"w": w0})
            ps.push_pull({"w": dw})

    Constructing it connects to every server (``ServerUnreachable`` if one does not answer).
    Errors are raised in the calling thread. Use one ``Client`` from one thread.
    ``close()`` says goodbye to the servers and stops the client's threads.
    """

    def __init__(
        self,
        servers: str | Sequence[str],
        config: ClientConfig | None = None,
        **overrides: Any,
    ) -> None:
        config = replace(config or ClientConfig(), **overrides)
        self._closed = False
        self._heartbeats: _Heartbeats | None = None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self._runner: _InlineLoop | _ThreadLoop = _InlineLoop()
            inline = True
        else:
            self._runner = _ThreadLoop()
            inline = False
        inner = replace(config, heartbeat_interval=0) if inline else config
        try:
            self._async = self._run(self._connect(servers, inner))
        except BaseException:
            self._runner.close()
            self._closed = True
            raise
        if inline and config.heartbeat_interval > 0:
            self._heartbeats = _Heartbeats(self._async.servers, self._async.client_id,
                                           config.heartbeat_interval)

    @staticmethod
    async def _connect(servers: str | Sequence[str], config: ClientConfig) -> AsyncClient:
        client = AsyncClient(servers, config)
        await client.connect()
        return client

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise ClosedError("this zps.Client is closed")
        return self._runner.run(coro)

    @property
    def client_id(self) -> str:
        return self._async.client_id

    @property
    def mode(self) -> str:
        """The consistency mode the servers run (``sync`` or ``async``)."""
        return self._async.mode

    def init(self, tensors: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """See ``AsyncClient.init``."""
        return self._run(self._async.init(tensors))

    def pull(self, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """See ``AsyncClient.pull``."""
        return self._run(self._async.pull(names))

    def push(self, deltas: Mapping[str, Any]) -> None:
        """See ``AsyncClient.push``."""
        self._run(self._async.push(deltas))

    def push_pull(self, deltas: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """See ``AsyncClient.push_pull``."""
        return self._run(self._async.push_pull(deltas))

    def stats(self) -> list[dict[str, Any]]:
        """See ``AsyncClient.stats``."""
        return self._run(self._async.stats())

    def close(self) -> None:
        """Say goodbye to the servers, close the sockets and stop the client's threads."""
        if self._closed:
            return
        if self._heartbeats is not None:
            self._heartbeats.stop()
        try:
            self._run(self._async.close())
        finally:
            self._closed = True
            self._runner.close()
