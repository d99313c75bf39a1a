"""``zps-server --procs N``: one command, N server processes, clients placing over all."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import zps
from zps.cli import procs
from zps.cli.options import UsageError
from zps.cli.procs import free_ports, plan_group
from zps.client.connect import regrouped

from .conftest import ROOT, python_env, run_cli, wait_for


def start_group(tmp_path: Path, name: str, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    ready = tmp_path / f"{name}.addr"
    proc = subprocess.Popen([sys.executable, "-m", "zps.cli.server_main", "--bind",
                             "tcp://127.0.0.1:0", "--ready-file", str(ready),
                             "--log-level", "warning", *args], env=python_env(), cwd=ROOT)
    wait_for(lambda: ready.exists() or proc.poll() is not None, what=f"{name} to listen")
    assert proc.poll() is None, f"{name} exited with {proc.returncode}"
    return proc, ready.read_text()


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=30)


def test_regrouping_puts_each_group_in_place_of_its_first_address() -> None:
    servers, standbys, groups = regrouped(
        ["tcp://a:1", "tcp://b:1"], ["tcp://s:1", ""],
        {(0, 0): ["tcp://*:1", "tcp://*:2"], (0, 1): ["tcp://s:1", "tcp://s:2"]})
    assert servers == ["tcp://a:1", "tcp://a:2", "tcp://b:1"]
    assert standbys == ["tcp://s:1", "tcp://s:2", ""]
    assert groups["tcp://a:2"] == ["tcp://a:1", "tcp://a:2"] and "tcp://b:1" not in groups
    with pytest.raises(zps.ConfigError, match="same --procs"):
        regrouped(["tcp://a:1"], ["tcp://s:1"], {(0, 0): ["tcp://a:1", "tcp://a:2"],
                                                 (0, 1): ["tcp://s:1", "tcp://s:2", "tcp://s:3"]})
    # A standby that did not answer: the group's first process keeps it, the others none.
    assert regrouped(["tcp://a:1"], ["tcp://s:1"], {(0, 0): ["tcp://a:1", "tcp://a:2"]})[1] \
        == ["tcp://s:1", ""]


def test_a_group_serves_one_address_and_clients_use_every_process(tmp_path: Path) -> None:
    group, address = start_group(tmp_path, "group", "--procs", "2", "--mode", "async",
                                 "--checkpoint-dir", str(tmp_path / "ckpt"))
    try:
        with zps.Client([address], chunk_bytes=1024) as ps:
            assert len(ps.servers) == 2 and ps.servers[0] == address
            ps.init({"w": np.zeros(1000, np.float32)})  # 4 KB: split over both
            ps.push({"w": np.ones(1000, np.float32)})
            np.testing.assert_array_equal(ps.pull()["w"], 1)
            assert [len(info["tables"]) for info in ps.stats()] == [2, 2]  # 4 row parts
        with zps.Client([address], role="observer") as evaluator:  # no init: it asks
            np.testing.assert_array_equal(evaluator.pull()["w"], 1)
        looked = run_cli("zps.cli.zps_main", "stats", address, "--json")
        assert looked.returncode == 0 and looked.stdout.count('"server_id"') == 2
    finally:
        assert stop(group) == 0
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["shard-0", "shard-1"]
    assert all(any(p.iterdir()) for p in (tmp_path / "ckpt").iterdir())  # final checkpoints


def test_a_standby_group_follows_and_takes_over(tmp_path: Path) -> None:
    primaries, address = start_group(tmp_path, "primaries", "--procs", "2", "--mode", "async")
    standbys, standby = start_group(tmp_path, "standbys", "--procs", "2", "--mode", "async",
                                    "--standby-of", address)
    try:
        with zps.Client([address], standbys=[standby], chunk_bytes=1024) as ps:
            assert len(ps.servers) == 2
            ps.init({"w": np.zeros(1000, np.float32)})
            wait_for(lambda: all(s["replica"]["standby"] for s in ps.stats()),
                     what="both standbys to attach")
            ps.push({"w": np.ones(1000, np.float32)})
            assert stop(primaries) == 0  # every primary of the group goes
            ps.push({"w": np.ones(1000, np.float32)})
            np.testing.assert_array_equal(ps.pull()["w"], 2)
            assert [s["epoch"] for s in ps.stats()] == [2, 2]
            # A worker started now, given the same addresses, finds the standby group.
            with zps.Client([address], standbys=[standby], chunk_bytes=1024,
                            connect_timeout=5.0) as late:
                np.testing.assert_array_equal(late.pull()["w"], 2)
                late.push({"w": np.ones(1000, np.float32)})
            np.testing.assert_array_equal(ps.pull()["w"], 3)
    finally:
        if primaries.poll() is None:
            stop(primaries)
        stop(standbys)


def test_a_standby_group_of_another_size_is_refused(tmp_path: Path) -> None:
    primaries, address = start_group(tmp_path, "primaries", "--procs", "2")
    try:
        done = run_cli("zps.cli.server_main", "--bind", "tcp://127.0.0.1:0", "--procs", "3",
                       "--standby-of", address)
        assert done.returncode == 2 and "give this standby --procs 2" in done.stderr
        # Regression (review): a plain standby followed process 0 alone, and said nothing.
        plain = run_cli("zps.cli.server_main", "--bind", "tcp://127.0.0.1:0",
                        "--standby-of", address)
        assert plain.returncode == 1 and "start the standby with --procs 2" in plain.stderr
    finally:
        stop(primaries)


def test_a_setting_a_process_refuses_is_exit_2_for_the_group() -> None:
    done = run_cli("zps.cli.server_main", "--bind", "tcp://127.0.0.1:0", "--procs", "2",
                   "--checkpoint-dir", "/dev/null/ckpt")  # each process says so
    assert done.returncode == 2 and "cannot write checkpoints to /dev/null/ckpt/shard-" \
        in done.stderr and "Traceback" not in done.stderr


def test_free_ports_are_distinct_and_port_ranges_fit() -> None:
    ports = free_ports("127.0.0.1", 16)
    assert len(set(ports)) == 16
    values = {"bind": "tcp://127.0.0.1:0", "metrics_bind": "127.0.0.1:65535", "pub_bind": "",
              "checkpoint_dir": "", "restore": ""}
    with pytest.raises(UsageError, match="--metrics-bind port 65535 \\+ --procs 2 passes"):
        plan_group(values, 2)
    with pytest.raises(UsageError, match="tcp:// --pub-bind"):
        plan_group({**values, "metrics_bind": "", "pub_bind": "ipc:///tmp/x"}, 2)
    children = plan_group({**values, "metrics_bind": "127.0.0.1:9100",
                           "pub_bind": "tcp://127.0.0.1:7000"}, 2)
    assert [c["metrics-bind"] for c in children] == ["127.0.0.1:9100", "127.0.0.1:9101"]
    assert [c["pub-bind"] for c in children] == ["tcp://127.0.0.1:7000", "tcp://127.0.0.1:7001"]


def test_regrouping_after_a_takeover_with_both_groups_listed() -> None:
    """Regression (review): the primary group down, a client listing every address of
    both groups got the standby group's second process twice."""
    found = {(0, 1): ["tcp://s:1", "tcp://s:2"], (1, 1): ["tcp://s:1", "tcp://s:2"]}
    servers, standbys, groups = regrouped(["tcp://p:1", "tcp://p:2"],
                                          ["tcp://s:1", "tcp://s:2"], found)
    assert servers == ["tcp://p:1", "tcp://s:2"] and standbys == ["tcp://s:1", ""]
    assert "" not in groups


def test_every_address_of_a_group_listed_and_a_plain_server_beside_it(tmp_path: Path,
                                                                      start_server) -> None:
    group, address = start_group(tmp_path, "group", "--procs", "2", "--mode", "async")
    plain = start_server(mode="async")
    try:
        with zps.Client([address]) as ps:
            everyone = ps.servers
        with zps.Client(everyone) as ps:  # every address given: the same list
            assert ps.servers == everyone
        for _ in range(2):  # the second worker meets a plain server whose layout is set
            with zps.Client([address, plain.address], chunk_bytes=1024) as ps:
                assert ps.servers == [*everyone, plain.address]
                ps.init({"w": np.zeros(1000, np.float32)})
                ps.push({"w": np.ones(1000, np.float32)})
        with zps.Client([address, plain.address], chunk_bytes=1024) as ps:
            np.testing.assert_array_equal(ps.pull()["w"], 2)
    finally:
        stop(group)


def test_a_curve_standby_group(tmp_path: Path) -> None:
    from zps.cli.keygen import keygen

    keygen(tmp_path / "keys")
    keys = tmp_path / "keys"
    curve = ["--curve-key", str(keys / "server.key_secret"),
             "--curve-authorized", str(keys / "authorized")]
    primaries, address = start_group(tmp_path, "primaries", "--procs", "2", *curve)
    standbys, standby = start_group(tmp_path, "standbys", "--procs", "2", *curve,
                                    "--standby-of", address)
    try:
        with zps.Client([address], standbys=[standby], curve_server_key=str(keys / "server.key"),
                        curve_key=str(keys / "worker.key_secret"), chunk_bytes=1024) as ps:
            ps.init({"w": np.zeros(1000, np.float32)})
            wait_for(lambda: all(s["replica"]["standby"] for s in ps.stats()),
                     what="both standbys to attach over CURVE")
    finally:
        stop(primaries)
        stop(standbys)


def test_an_unattended_stop_kills_a_process_that_ignores_sigterm(monkeypatch) -> None:
    """Regression (review): a process died, and the supervisor waited forever for a
    sibling that ignored SIGTERM."""
    monkeypatch.setattr(procs, "STOP_SECONDS", 0.3)
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal; signal.signal("
                                 "signal.SIGTERM, signal.SIG_IGN); print(flush=True); "
                                 "signal.pause()"], stdout=subprocess.PIPE)
    assert stubborn.stdout is not None and stubborn.stdout.readline()  # SIGTERM ignored now
    assert procs._stop_all([stubborn], 1, []) == 1
    assert stubborn.returncode == -signal.SIGKILL
