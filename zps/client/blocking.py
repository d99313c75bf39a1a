"""``Client``: the blocking facade over ``AsyncClient`` for ordinary training loops.

The async client lives on a private event loop in a daemon thread that this object owns;
each method submits a coroutine there and waits for it. Because that loop keeps running
between calls, heartbeats go on while the training loop computes.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from zps.client.async_client import AsyncClient
from zps.config import ClientConfig
from zps.errors import ClosedError
from zps.runtime import new_event_loop

T = TypeVar("T")


class Client:
    """Blocking zps client with the same methods as ``AsyncClient``.

    ::

        with zps.Client(["tcp://127.0.0.1:5570"]) as ps:
            ps.init({"w": w0})
            ps.push_pull({"w": dw})

    Constructing it connects to every server (``ServerUnreachable`` if one does not answer).
    Errors are raised in the calling thread; ``close()`` says goodbye and stops the thread.
    """

    def __init__(
        self,
        servers: str | Sequence[str],
        config: ClientConfig | None = None,
        **overrides: Any,
    ) -> None:
        self._loop = new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="zps-client",
                                        daemon=True)
        self._thread.start()
        self._closed = False
        try:
            self._async = self._run(self._make(servers, config, overrides))
        except BaseException:
            self._stop_loop()
            raise

    async def _make(
        self, servers: str | Sequence[str], config: ClientConfig | None, overrides: dict[str, Any]
    ) -> AsyncClient:
        client = AsyncClient(servers, config, **overrides)
        await client.connect()
        return client

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, coro: Awaitable[T]) -> T:
        if self._closed:
            raise ClosedError("this zps.Client is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()  # type: ignore[arg-type]

    @property
    def client_id(self) -> str:
        return self._async.client_id

    @property
    def mode(self) -> str:
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
        """Say goodbye to the servers, close the sockets and stop the client's thread."""
        if self._closed:
            return
        try:
            self._run(self._async.close())
        finally:
            self._closed = True
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
