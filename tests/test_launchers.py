"""Ranks from launchers' variables, at the CLI edge (sans-IO), and ``--print-config``."""

from __future__ import annotations

import json

import pytest

from zps.cli.launchers import from_launcher
from zps.cli.options import UsageError
from zps.cli.worker_main import load_config

from .conftest import run_cli

TF = json.dumps({"cluster": {"chief": ["c:1"], "worker": ["w0:1", "w1:1"],
                             "ps": ["ps0:2222", "tcp://ps1:2222"]},
                 "task": {"type": "worker", "index": 1}})


@pytest.mark.parametrize("environ,index,count", [
    ({"TF_CONFIG": TF}, 2, 3),  # after the chief
    ({"RANK": "3", "WORLD_SIZE": "4"}, 3, 4),
    ({"JOB_COMPLETION_INDEX": "5", "ZPS_NUM_WORKERS": "8"}, 5, 8),
    ({"VC_TASK_INDEX": "1", "ZPS_NUM_WORKERS": "2"}, 1, 2),
    ({"SLURM_PROCID": "6", "SLURM_NTASKS": "7"}, 6, 7),
    ({"RANK": "1", "WORLD_SIZE": "4", "SLURM_PROCID": "3", "SLURM_NTASKS": "9"}, 1, 4),
    ({"RANK": "1", "WORLD_SIZE": "4", "ZPS_WORKER_INDEX": "0"}, 0, 4),  # ZPS_* first
])
def test_each_launcher_gives_the_rank(environ: dict[str, str], index: int, count: int) -> None:
    _, ctx, _ = load_config([], environ)
    assert (ctx.worker_index, ctx.num_workers) == (index, count)


def test_flags_beat_launchers_and_tf_config_names_the_servers() -> None:
    _, ctx, values = load_config(["--worker-index", "0"], {"TF_CONFIG": TF})
    assert ctx.worker_index == 0 and ctx.num_workers == 3
    assert values["servers"] == "tcp://ps0:2222,tcp://ps1:2222"
    assert values["sources"]["servers"] == "TF_CONFIG"


@pytest.mark.parametrize("environ,message", [
    ({"TF_CONFIG": "{nope"}, "not a cluster spec"),
    ({"TF_CONFIG": json.dumps({"task": {"type": "ps", "index": 0}})}, "start zps-server"),
    ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x' must be an integer"),
    ({"RANK": "4", "WORLD_SIZE": "4"}, "must be in 0..3"),
])
def test_launcher_mistakes_are_one_line(environ: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        load_config([], environ)


def test_no_launcher_is_none() -> None:
    assert from_launcher({"HOME": "/root"}) is None


def test_print_config_says_where_each_value_came_from() -> None:
    result = run_cli("zps.cli.worker_main", "--print-config", "--job", "ctr",
                     env={"RANK": "1", "WORLD_SIZE": "2", "ZPS_SEED": "7"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "worker-index = 1  (RANK/WORLD_SIZE (torchrun))" in lines
    assert "seed = 7  (ZPS_SEED)" in lines
    assert "job = 'ctr'  (--job)" in lines
    assert "batch-size = 4096  (default of --job ctr)" in lines


def test_off_a_terminal_progress_is_a_few_log_lines(capsys: pytest.CaptureFixture[str]) -> None:
    from zps.jobs.progress import LogLines, progress_bar
    from zps.jobs.runner import JobContext

    bar = progress_bar(JobContext(worker_index=3), 95)  # (pytest's stderr is no terminal)
    assert isinstance(bar, LogLines)
    with bar:
        for _ in range(95):
            bar.update(1)
            bar.set_postfix(loss="0.123")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 11 and lines[-1].startswith("worker 3: 95/95 steps (100%")
    assert lines[0].startswith("worker 3: 9/95 steps (9%") and lines[0].endswith("loss=0.123")
