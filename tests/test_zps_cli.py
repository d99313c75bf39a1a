"""The ``zps`` command against a real server process: stats, tables, export, mistakes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

import zps

from .conftest import run_cli


def test_tables_stats_and_export_of_a_running_server(start_server: Any, tmp_path: Path) -> None:
    server = start_server(mode="async")
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    with zps.Client([server.address]) as ps:
        ps.init({"w": w, "b": np.zeros(3)})
        ps.init_rows("emb", dim=2)
        ps.push_rows("emb", [1, 2], np.ones((2, 2)))
    tables = run_cli("zps.cli.zps_main", "tables", server.address)
    assert tables.returncode == 0, tables.stderr
    lines = tables.stdout.splitlines()
    assert lines[0].split() == ["name", "kind", "dtype", "shape", "version", "rows"]
    assert any(line.split()[:4] == ["w", "dense", "float32", "4x3"] for line in lines)
    assert any(line.split()[:2] == ["emb", "rows"] and line.split()[-1] == "2"
               for line in lines)
    stats = run_cli("zps.cli.zps_main", "stats", server.address, "--json")
    assert json.loads(stats.stdout)[0]["mode"] == "async"
    assert "mode async" in run_cli("zps.cli.zps_main", "stats", server.address).stdout
    out = tmp_path / "model.npz"
    export = run_cli("zps.cli.zps_main", "export", server.address, "--out", str(out))
    assert export.returncode == 0, export.stderr
    with np.load(out) as saved:
        assert sorted(saved.files) == ["b", "w"]
        np.testing.assert_array_equal(saved["w"], w)


def test_mistakes_get_one_line(tmp_path: Path) -> None:
    unreachable = run_cli("zps.cli.zps_main", "tables", "tcp://127.0.0.1:1", "--timeout",
                          "0.3")
    assert unreachable.returncode == 2
    assert unreachable.stderr.count("\n") == 1 and "could not reach" in unreachable.stderr
    bad_out = run_cli("zps.cli.zps_main", "export", "tcp://127.0.0.1:1", "--out", "x.txt",
                      "--timeout", "0.3")
    assert bad_out.returncode == 2 and "must end in .npz" in bad_out.stderr
    unknown = run_cli("zps.cli.zps_main", "frobnicate")
    assert unknown.returncode == 2 and "invalid choice" in unknown.stderr
    assert unknown.stderr.count("\n") == 1
    assert run_cli("zps.cli.zps_main").returncode == 2


def test_top_refreshes_in_place_on_a_terminal(start_server: Any) -> None:
    import os
    import pty
    import subprocess
    import sys

    from .conftest import ROOT, python_env

    server = start_server(mode="sync", workers=1)
    with zps.Client([server.address], client_id="trainer-7") as ps:
        ps.init({"w": np.zeros(8, np.float32)})
        ps.push_pull({"w": np.ones(8)})
        main, child = pty.openpty()
        proc = subprocess.Popen([sys.executable, "-m", "zps.cli.zps_main", "top", server.address,
                                 "--interval", "0.2", "--count", "3"], stdout=child,
                                stderr=child, env={**python_env(), "COLUMNS": "160"}, cwd=ROOT)
        os.close(child)
        seen = b""
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the child closed its end
                break
            if not chunk:
                break
            seen += chunk
        os.close(main)
        assert proc.wait(timeout=30) == 0
    text = seen.decode(errors="replace")
    assert "zps servers" in text and "trainer-7" in text and "live" in text
    assert "\x1b[" in text  # redrawn in place with terminal control sequences
    bad = run_cli("zps.cli.zps_main", "top", "tcp://127.0.0.1:1", "--interval", "0")
    assert bad.returncode == 2 and "--interval must be > 0" in bad.stderr
