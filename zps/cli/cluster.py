"""Start a local zps cluster (servers and workers as real processes) and tear it down.

Used by ``make demo`` and the benchmarks; every process it starts is stopped on exit,
whatever happened.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from zps.errors import ZpsError


class LocalCluster:
    """Server processes on loopback ports chosen by the OS, and worker processes.

    ``with LocalCluster(out_dir) as cluster: cluster.start_servers(2, ...)`` waits until
    each server is listening; ``cluster.addresses`` are their endpoints.
    """

    def __init__(self, out_dir: str | Path, python: str = sys.executable) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.python = python
        self.servers: list[subprocess.Popen[bytes]] = []
        self.addresses: list[str] = []
        self.standby_addresses: list[str] = []
        self.workers: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start_servers(self, count: int, args: Sequence[str] = (), timeout: float = 30.0) -> None:
        """Start ``count`` servers on free loopback ports and wait until all are listening."""
        started = [self._server(f"server{len(self.addresses) + i}", args) for i in range(count)]
        self.addresses += self._wait_ready(started, timeout)

    def start_standbys(self, args: Sequence[str] = (), timeout: float = 30.0) -> None:
        """Start a hot standby for every server (``zps-server --standby-of``); their
        addresses go to ``standby_addresses`` and to the workers started after this."""
        started = [self._server(f"standby{i}", [*args, "--standby-of", address])
                   for i, address in enumerate(self.addresses)]
        self.standby_addresses = self._wait_ready(started, timeout)

    def kill_server(self, index: int) -> None:
        """SIGKILL server ``index`` (a crash: no goodbye, no checkpoint)."""
        proc = self.servers[index]
        proc.kill()
        proc.wait()

    def _server(self, name: str, args: Sequence[str]) -> tuple[subprocess.Popen[bytes], Path]:
        ready_file = self.out_dir / f"{name}.addr"
        ready_file.unlink(missing_ok=True)
        log = open(self.out_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop
        self._logs.append(log)
        proc = subprocess.Popen(
            [self.python, "-m", "zps.cli.server_main", "--bind", "tcp://127.0.0.1:0",
             "--ready-file", str(ready_file), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.servers.append(proc)
        return proc, ready_file

    def _wait_ready(self, started: list[tuple[subprocess.Popen[bytes], Path]],
                    timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        addresses = []
        for proc, ready_file in started:
            while not ready_file.exists():
                if proc.poll() is not None:
                    raise ZpsError(
                        f"a zps-server exited with {proc.returncode}; see "
                        f"{self.out_dir}/{ready_file.stem}.log"
                    )
                if time.monotonic() > deadline:
                    raise ZpsError(f"a zps-server did not start within {timeout:g} s")
                time.sleep(0.02)
            addresses.append(ready_file.read_text())
        return addresses

    def start_worker(
        self, args: Sequence[str], quiet_stdout: bool = False
    ) -> subprocess.Popen[bytes]:
        """Start one ``zps-worker`` connected to every server of this cluster."""
        proc = subprocess.Popen(
            [
                self.python,
                "-m",
                "zps.cli.worker_main",
                "--servers",
                ",".join(self.addresses),
                *(["--standbys", ",".join(self.standby_addresses)]
                  if self.standby_addresses else []),
                *args,
            ],
            stdout=subprocess.DEVNULL if quiet_stdout else None,
        )
        self.workers.append(proc)
        return proc

    def wait_workers(self, timeout: float) -> list[int]:
        """Wait for every worker to finish; their exit codes."""
        deadline = time.monotonic() + timeout
        codes = []
        for proc in self.workers:
            try:
                codes.append(proc.wait(max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                raise ZpsError(f"workers did not finish within {timeout:g} s") from None
        return codes

    def stop(self) -> None:
        """SIGTERM everything still running, then SIGKILL what did not stop in 10 s."""
        procs = [p for p in self.workers + self.servers if p.poll() is None]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        for log in self._logs:
            log.close()
        self._logs.clear()
