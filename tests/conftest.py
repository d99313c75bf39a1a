"""Shared fixtures: real servers on random loopback ports, in a thread or as processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from zps import Server, ServerConfig
from zps.runtime import new_event_loop

ROOT = Path(__file__).resolve().parent.parent


class ServerThread:
    """A real ``zps.Server`` running on its own event loop thread, bound to 127.0.0.1:0."""

    def __init__(self, config: ServerConfig) -> None:
        self.loop = new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: Server = self.call(self._start(config))
        self.address = self.server.address

    async def _start(self, config: ServerConfig) -> Server:
        server = Server(config)
        server.start()
        return server

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def run(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the server's loop (to inspect state without races)."""
        future: Future[Any] = Future()

        def _call() -> None:
            try:
                future.set_result(fn())
            except Exception as exc:
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(_call)
        return future.result(timeout=30)

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.call(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def start_server() -> Iterator[Callable[..., ServerThread]]:
    """Factory: ``start_server(mode="sync", workers=1, ...)`` -> a running ServerThread."""
    started: list[ServerThread] = []

    def _start(**overrides: Any) -> ServerThread:
        config = replace(ServerConfig(bind="tcp://127.0.0.1:0"), **overrides)
        server = ServerThread(config)
        started.append(server)
        return server

    yield _start
    for server in started:
        server.stop()


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()  # never set: its wait is the poll interval
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        tick.wait(0.01)


def python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m <args>`` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**python_env(), **(env or {})},
        cwd=ROOT,
    )
