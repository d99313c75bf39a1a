"""The zps-server and zps-worker daemons as real processes, and their command lines."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import zps
from zps.cli import server_main, worker_main
from zps.cli.cluster import LocalCluster
from zps.cli.options import UsageError
from zps.store import latest_checkpoint, read_checkpoint

from .conftest import ROOT, python_env, run_cli


def test_daemons_train_digits_to_the_accuracy_bar(tmp_path: Path) -> None:
    with LocalCluster(tmp_path) as cluster:
        cluster.start_servers(2, ["--mode", "sync", "--workers", "3"])
        for index in range(3):  # ranks and the worker count come from the servers
            cluster.start_worker([
                "--epochs", "60", "--quiet", "--metrics-out", str(tmp_path / f"w{index}.json"),
            ])
        assert cluster.wait_workers(timeout=120) == [0, 0, 0]
    results = [json.loads((tmp_path / f"w{i}.json").read_text()) for i in range(3)]
    assert sorted(r["worker"] for r in results) == [0, 1, 2]
    accuracies = {round(r["test_accuracy"], 6) for r in results}
    assert len(accuracies) == 1  # sync mode: every worker ends with the same parameters
    assert accuracies.pop() >= 0.95
    logs = "".join((tmp_path / f"server{i}.log").read_text() for i in range(2))
    assert logs.count("joined") == 6 and logs.count("left") == 6
    assert "stopped" in logs  # both servers shut down cleanly on SIGTERM


def test_server_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    ready = tmp_path / "addr"
    proc = subprocess.Popen(
        [sys.executable, "-m", "zps.cli.server_main", "--bind", "tcp://127.0.0.1:0",
         "--ready-file", str(ready)], env=python_env(), cwd=ROOT,
        stderr=subprocess.PIPE, text=True,
    )
    try:
        from .conftest import wait_for

        wait_for(ready.exists, what="the server to listen")
        with zps.Client([ready.read_text()]) as ps:
            ps.init({"w": np.zeros(2)})
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "stopped" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["zps.cli.server_main", "--mode", "bsp"], {}, "use sync, async or ssp:K"),
        (["zps.cli.server_main", "--aggregate", "avg"], {}, "use mean, weighted, median"),
        (["zps.cli.server_main", "--quorum", "-1"], {}, "--quorum must be >= 0"),
        (["zps.cli.worker_main", "--server-optimizer", "adam"], {}, "use sgd:LR"),
        (["zps.cli.server_main", "--bogus"], {}, "unrecognized arguments: --bogus"),
        (["zps.cli.server_main"], {"ZPS_WORKERS": "zero"}, "ZPS_WORKERS: invalid value"),
        (["zps.cli.server_main", "--bind", "localhost:5570"], {}, "must look like tcp://"),
        # Regression: ZeroMQ bound port 99999 as 34463 (modulo 65536) without a word.
        (["zps.cli.server_main", "--bind", "tcp://127.0.0.1:99999"], {}, "port from 0 to 65535"),
        (["zps.cli.server_main", "--pub-bind", "tcp://127.0.0.1:70000"], {}, "--pub-bind"),
        # Regression: an unwritable --checkpoint-dir was noticed at the first write.
        (["zps.cli.server_main", "--bind", "tcp://127.0.0.1:0", "--checkpoint-dir",
          "/dev/null/ckpt"], {}, "cannot write checkpoints to /dev/null/ckpt"),
        (["zps.cli.server_main", "--config", "/nonexistent.toml"], {}, "cannot read config"),
        (["zps.cli.worker_main", "--worker-index", "4", "--num-workers", "2"], {},
         "--worker-index 4 must be in 0..1"),
        (["zps.cli.worker_main", "--job", "nosuchjob"], {}, "unknown job 'nosuchjob'"),
        (["zps.cli.worker_main", "--epochs", "-1"], {}, "expected a positive integer"),
        (["zps.cli.worker_main", "--servers", "tcp://127.0.0.1"], {}, "invalid server address"),
        (["zps.cli.worker_main", "--metrics-out", "/nonexistent/m.json"], {},
         "cannot write --metrics-out"),
        # Regression (review): ZeroMQ connected to port 112904 as 47368.
        (["zps.cli.worker_main", "--servers", "tcp://127.0.0.1:112904"], {},
         "invalid server address"),
        (["zps.cli.server_main", "--max-message-bytes", "1" + "0" * 30], {}, "at most"),
        (["zps.cli.server_main", "--repl-interval", "inf"], {}, "a finite number > 0"),
        (["zps.cli.zps_main", "stats", "tcp://127.0.0.1:1", "--timeout", "nan"], {},
         "--timeout must be > 0"),
        # Regression (review): these were found only once the group had started.
        (["zps.cli.server_main", "--bind", "tcp://127.0.0.1:0", "--procs", "2",
          "--ready-file", "/nonexistent/addr"], {}, "cannot write --ready-file"),
    ],
)
def test_cli_mistakes_get_one_line_and_exit_2(args: list[str], env: dict[str, str],
                                              message: str) -> None:
    result = run_cli(*args, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr


def test_worker_with_no_server_says_so_in_one_line() -> None:
    result = run_cli("zps.cli.worker_main", "--servers", "tcp://127.0.0.1:1",
                     "--connect-timeout", "0.3", "--quiet")
    assert result.returncode == 1
    assert "could not reach a zps server at tcp://127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr


def test_unwritable_ready_file_is_one_line() -> None:
    result = run_cli("zps.cli.server_main", "--bind", "tcp://127.0.0.1:0",
                     "--ready-file", "/nonexistent/addr")
    assert result.returncode == 2 and "cannot write --ready-file" in result.stderr
    assert "Traceback" not in result.stderr


def test_bind_conflict_is_one_line_naming_the_address(start_server) -> None:
    """Regression: a bind error named --bind even when the change stream's address was the
    one taken."""
    server = start_server()
    result = run_cli("zps.cli.server_main", "--bind", server.address)
    assert result.returncode == 2 and f"cannot bind the server (--bind) to {server.address}" \
        in result.stderr and "Traceback" not in result.stderr
    result = run_cli("zps.cli.server_main", "--bind", "tcp://127.0.0.1:0",
                     "--pub-bind", server.address)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"cannot bind the change stream (--pub-bind) to {server.address}" in result.stderr


def test_sigterm_while_a_pull_waits_still_checkpoints_and_stops(tmp_path: Path) -> None:
    """Regression: SIGTERM while a pull waited for a sync round made zps-server exit 0
    without its final checkpoint or its "stopped" line (the signal handler's close() was
    cancelled by the second close() that serve() called)."""
    ready, folder = tmp_path / "addr", tmp_path / "ckpt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "zps.cli.server_main", "--bind", "tcp://127.0.0.1:0",
         "--mode", "sync", "--workers", "2", "--checkpoint-dir", str(folder),
         "--ready-file", str(ready)], env=python_env(), cwd=ROOT,
        stderr=subprocess.PIPE, text=True)
    errors: list[BaseException] = []
    try:
        from .conftest import wait_for

        wait_for(ready.exists, what="the server to listen")
        ps = zps.Client([ready.read_text()], timeout=30, retries=0)
        ps.init({"w": np.zeros(2)})

        def wait_for_round() -> None:
            try:
                ps.push_pull({"w": np.ones(2)})  # the round waits for a second worker
            except zps.ZpsError as exc:
                errors.append(exc)

        waiter = threading.Thread(target=wait_for_round)
        waiter.start()
        with zps.Client([ready.read_text()], role="observer") as probe:
            wait_for(lambda: probe.stats()[0]["waiting"] == 1, what="the pull to wait")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        waiter.join(timeout=20)
        ps.close()
    finally:
        proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err
    assert "checkpoint" in err and "written" in err and "stopped" in err
    assert errors and "shutting down" in str(errors[0])
    snapshot = read_checkpoint(latest_checkpoint(folder))  # type: ignore[arg-type]
    assert [t.name for t in snapshot.tables] == ["w"]


def test_config_precedence_flag_env_toml(tmp_path: Path) -> None:
    toml = tmp_path / "zps.toml"
    toml.write_text('mode = "async"\nworkers = 3\nlr-scale = 0.25\n')
    config, _ = server_main.load_config(["--config", str(toml)], {})
    assert (config.mode, config.workers, config.lr_scale) == ("async", 3, 0.25)
    config, _ = server_main.load_config(["--config", str(toml)], {"ZPS_WORKERS": "5"})
    assert config.workers == 5
    config, _ = server_main.load_config(["--config", str(toml), "--workers", "7"],
                                        {"ZPS_WORKERS": "5"})
    assert config.workers == 7
    toml.write_text("wrokers = 3\n")
    with pytest.raises(UsageError, match="unknown setting 'wrokers'"):
        server_main.load_config(["--config", str(toml)], {})
    _client, ctx, _ = worker_main.load_config(
        [], {"ZPS_SERVERS": "tcp://a:1,tcp://b:2", "ZPS_NUM_WORKERS": "4",
             "ZPS_WORKER_INDEX": "3", "ZPS_QUIET": "true"})
    assert (ctx.num_workers, ctx.worker_index, ctx.progress) == (4, 3, False)


def test_user_job_runs_from_module_function(tmp_path: Path) -> None:
    job = tmp_path / "myjob.py"
    job.write_text(
        "import numpy as np\n"
        "def run(ps, ctx):\n"
        "    ps.init({'w': np.zeros(3)})\n"
        "    out = ps.push_pull({'w': np.ones(3) * (ctx.worker_index + 1)})\n"
        "    return {'w': out['w'].tolist()}\n"
    )
    metrics = tmp_path / "out.json"
    with LocalCluster(tmp_path) as cluster:
        cluster.start_servers(1, ["--mode", "async"])
        result = run_cli("zps.cli.worker_main", "--servers", cluster.addresses[0],
                         "--job", "myjob:run", "--metrics-out", str(metrics),
                         env={"PYTHONPATH": f"{tmp_path}:{ROOT}"})
    assert result.returncode == 0, result.stderr
    assert json.loads(metrics.read_text()) == {"w": [1.0, 1.0, 1.0]}


def test_training_finishes_when_a_worker_is_killed_mid_round(tmp_path: Path) -> None:
    from .conftest import wait_for

    with LocalCluster(tmp_path) as cluster:
        cluster.start_servers(1, ["--mode", "sync", "--workers", "3", "--log-every", "20",
                                  "--heartbeat-interval", "0.1", "--liveness", "5"])
        workers = [
            cluster.start_worker([
                "--num-workers", "3", "--worker-index", str(i), "--epochs", "60", "--quiet",
                "--heartbeat-interval", "0.1", "--metrics-out", str(tmp_path / f"w{i}.json"),
            ])
            for i in range(3)
        ]
        log = tmp_path / "server0.log"
        wait_for(lambda: "round 40 applied" in log.read_text(), timeout=60,
                 what="training to be under way")
        workers[2].send_signal(signal.SIGKILL)
        codes = cluster.wait_workers(timeout=120)
    assert codes[:2] == [0, 0] and codes[2] == -signal.SIGKILL
    assert "declared dead" in log.read_text()
    for i in range(2):
        assert json.loads((tmp_path / f"w{i}.json").read_text())["test_accuracy"] >= 0.95


def test_server_default_optimizer_trains_from_pushed_gradients(tmp_path: Path) -> None:
    with LocalCluster(tmp_path) as cluster:
        cluster.start_servers(1, ["--mode", "sync", "--workers", "2",
                                  "--optimizer", "adam:0.005"])
        for i in range(2):
            cluster.start_worker(["--num-workers", "2", "--worker-index", str(i),
                                  "--epochs", "30", "--quiet",
                                  "--metrics-out", str(tmp_path / f"w{i}.json")])
        assert cluster.wait_workers(timeout=120) == [0, 0]
        with zps.Client(cluster.addresses, role="observer") as ps:
            tables = ps.stats()[0]["tables"]
    assert all(t["optimizer"]["name"] == "adam" for t in tables)
    assert json.loads((tmp_path / "w0.json").read_text())["test_accuracy"] >= 0.95
