"""Every command and example the README shows, run as a new user would.

Python blocks run as written (servers started first where a ``readme-test`` comment says
which); shell blocks run in bash with ``.venv/bin`` on the PATH; the demo variants run on a
smaller budget (``--epochs 50``); ``make demo`` and ``make demo-failover`` run as they are.
A block or command this file does not know how to run fails the test, so a new example in
the README cannot go unchecked.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from zps.devices import cuda_available

from .conftest import ROOT, python_env, wait_for

README = (ROOT / "README.md").read_text()
BLOCK = re.compile(r"(?:<!-- readme-test: (?P<directive>[^>]*?) -->\n)?```(?P<lang>\w*)\n"
                   r"(?P<body>.*?)```", re.S)
INLINE_DEMO = re.compile(r"`(python -m zps\.cli\.demo[^`]*)`")
DEMO_BUDGET = ["--epochs", "50", "--quiet"]
NOT_RUN = {
    "docker build -f docker/Dockerfile -t zps .": "no Docker engine here: test_docker.py "
                                                  "validates the files and runs the topology",
    "docker compose -f docker/docker-compose.yml up": "as above",
    "make test": "that is what is running",
}
BENCHES = ("make bench", "python bench/")  # minutes each: checked to start (--help)


def blocks(lang: str) -> list[tuple[str, str]]:
    return [(m["directive"] or "", m["body"]) for m in BLOCK.finditer(README)
            if m["lang"] == lang]


def commands(body: str) -> list[str]:
    """The commands of a shell block, comments dropped."""
    found = []
    for line in body.splitlines():
        line = line.split(" #", 1)[0].strip() if not line.startswith("#") else ""
        if line:
            found.append(line)
    return found


def env() -> dict[str, str]:
    environ = python_env()
    environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environ['PATH']}"
    return environ


@contextmanager
def servers(directive: str) -> Iterator[None]:
    """Start the servers a ``readme-test`` comment names (primaries, then standbys)."""
    fields = dict(part.strip().split(" ", 1) for part in directive.split(";") if part.strip()
                  and not part.strip().startswith("needs "))
    primaries = fields.get("servers", "").split()
    standbys = fields.get("standbys", "").split()
    procs = []
    try:
        for address in primaries:
            procs.append(_server(["--bind", address]))
        for address, primary in zip(standbys, primaries, strict=False):
            procs.append(_server(["--bind", address, "--standby-of", primary]))
        for address in primaries + standbys:
            wait_for(lambda a=address: _listening(a), what=f"a server on {address}")
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=20)


def _server(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "zps.cli.server_main", *args,
                             "--log-level", "warning"], env=env(), cwd=ROOT)


def _listening(address: str) -> bool:
    import zps

    try:
        with zps.Client([address], role="observer", connect_timeout=0.5,
                        heartbeat_interval=0) as probe:
            return bool(probe.stats())
    except zps.ZpsError:
        return False


def run(command: str | list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, shell=isinstance(command, str), executable="/bin/bash"
                            if isinstance(command, str) else None, cwd=ROOT, env=env(),
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def test_the_readme_holds_no_unmeasured_placeholder() -> None:
    assert "⟦" not in README and "TODO" not in README


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_examples_run_as_written(index: int, tmp_path: Path) -> None:
    directive, body = blocks("python")[index]
    if "needs gpu" in directive and not cuda_available():
        pytest.skip("a GPU example: no CUDA device here (tests/test_array_api.py runs the "
                    "same path under array_api_strict)")
    script = tmp_path / "example.py"
    script.write_text(body)
    with servers(directive):
        run([sys.executable, str(script)], timeout=120)


# Blocks marked ``not-run`` drive tools this machine lacks; they may hold nothing else.
EXTERNAL = ("docker ", "kubectl ", "sbatch ", "VENV=", "tail ", "python3 -m venv ",
            "zps keygen ")


def _runnable(directive: str) -> bool:
    return not directive.startswith("not-run")


def test_blocks_not_run_hold_only_external_tools() -> None:
    skipped = [body for directive, body in blocks("sh") if not _runnable(directive)]
    assert skipped
    for body in skipped:
        for command in commands(body):
            assert command.startswith(EXTERNAL), f"{command!r} sits in a not-run block"


def _shell_blocks() -> list[str]:
    """Shell blocks that are recipes (run whole), not lists of commands."""
    return [body for directive, body in blocks("sh") if "&" in body and _runnable(directive)]


@pytest.mark.parametrize("index", range(len(_shell_blocks())))
def test_shell_recipes_run_as_written(index: int) -> None:
    run(_shell_blocks()[index], timeout=240)


def _listed_commands() -> list[str]:
    found = [c for directive, body in blocks("sh") if "&" not in body and _runnable(directive)
             for c in commands(body)]
    found += INLINE_DEMO.findall(README)
    found += [f"make {t}" for t in re.findall(r"`make ([a-z-]+)`", README)]
    return sorted(set(found))


@pytest.mark.parametrize("command", _listed_commands())
def test_every_listed_command_runs(command: str, tmp_path: Path) -> None:
    if command in NOT_RUN:
        pytest.skip(NOT_RUN[command])
    if command.startswith(BENCHES):
        script = "bench/throughput.py" if command == "make bench" else shlex.split(command)[1]
        run([sys.executable, script, "--help"])
        return
    if command.startswith("python -m zps.cli.demo"):
        args = shlex.split(command)[3:]
        if "--help" not in args:
            budget = (["--epochs", "1", "--quiet"] if "ctr" in " ".join(args) else
                      ["--quiet"] if "torch-digits" in args else DEMO_BUDGET)
            args += [*budget, "--out", str(tmp_path)]
        out = run([sys.executable, "-m", "zps.cli.demo", *args]).stdout
        assert "--help" in args or "final test accuracy" in out or "final test AUC" in out
        if "final test AUC" in out:  # the ctr jobs learn, even on this budget
            got = json.loads((tmp_path / "worker0.json").read_text())
            assert got["test_auc"] > got["best_auc"] - 0.05, got  # best 0.835, chance 0.5
            assert (tmp_path / "auc.png").exists()
        return
    assert command.startswith("make "), f"the README shows {command!r}: teach this test it"
    out = run(command, timeout=600).stdout
    if command in ("make demo", "make demo-failover"):
        assert "final test accuracy" in out
    if command == "make demo-failover":
        assert "promoted to primary" in out
