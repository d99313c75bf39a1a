"""Prometheus /metrics of a real server: scraped over HTTP, parsed with prometheus-client's
own parser, counters moving as pushes happen."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import zps
from zps.exposition import parse_bind

from .conftest import ROOT, python_env, run_cli, wait_for


def scrape(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = text_of(address)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def text_of(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as answer:
        return answer.read().decode()  # type: ignore[no-any-return]


def test_metrics_move_as_workers_push(start_server: Any) -> None:
    server = start_server(mode="sync", workers=1, metrics_bind="127.0.0.1:0")
    address = server.server.metrics.address
    with zps.Client([server.address], client_id="w0") as ps:
        ps.init({"w": np.zeros(256, np.float32)})
        before = scrape(address)
        for _ in range(3):
            ps.push_pull({"w": np.ones(256, np.float32)})
        after = scrape(address)
    table = (("table", "w"),)
    assert after[("zps_pushes_total", ())] - before[("zps_pushes_total", ())] == 3
    assert after[("zps_table_rounds", table)] == 3
    assert after[("zps_table_bytes_in_total", table)] - before[
        ("zps_table_bytes_in_total", table)] == 3 * 1024
    assert after[("zps_members", (("state", "live"),))] == 1
    assert after[("zps_role", (("role", "primary"),))] == 1
    assert after[("zps_ssp_clock_spread", ())] == 0
    assert after[("zps_job_rounds", ())] == 3
    names = [line.split()[2] for line in text_of(address).splitlines()
             if line.startswith("# TYPE")]
    assert len(names) == len(set(names))  # every family once


@pytest.mark.parametrize("text", ["9100", "localhost", ":9100", "host:99999", "h:p"])
def test_a_bad_metrics_address_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_bind(text)
    result = run_cli("zps.cli.server_main", "--metrics-bind", text)
    assert result.returncode == 2 and result.stderr.count("\n") == 1


def test_latency_histograms_and_checkpoint_age(start_server: Any, tmp_path: Any) -> None:
    server = start_server(mode="sync", workers=1, metrics_bind="127.0.0.1:0",
                          checkpoint_dir=str(tmp_path))
    address = server.server.metrics.address
    with zps.Client([server.address]) as ps:
        ps.init({"w": np.zeros(64, np.float32)})
        for _ in range(4):
            ps.push_pull({"w": np.ones(64, np.float32)})
        ps.pull()
        found = scrape(address)
        assert found[("zps_checkpoint_unsaved_changes", ())] == 5  # init and 4 rounds
        server.call(server.server.checkpoint())
        after = scrape(address)
    push_pull = (("op", "push_pull"),)
    assert found[("zps_request_seconds_count", push_pull)] == 4
    assert found[("zps_request_seconds_bucket", (("le", "+Inf"), ("op", "push_pull")))] == 4
    assert 0 < found[("zps_request_seconds_sum", push_pull)] < 4 * 30
    assert found[("zps_request_seconds_count", (("op", "pull"),))] == 1
    assert found[("zps_round_seconds_count", ())] == 4
    buckets = sorted((float(dict(labels)["le"]), value) for (name, labels), value in
                     found.items() if name == "zps_request_seconds_bucket"
                     and dict(labels)["op"] == "push_pull")
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    assert after[("zps_checkpoint_unsaved_changes", ())] == 0
    assert after[("zps_checkpoint_age_seconds", ())] < found[("zps_checkpoint_age_seconds", ())]
    assert after[("zps_checkpoint_seconds", ())] > 0


def test_client_metrics_count_calls_and_time_them(start_server: Any) -> None:
    server = start_server(mode="async")
    with zps.Client([server.address]) as ps:
        ps.init({"w": np.zeros(16, np.float32)})
        for _ in range(5):
            ps.push_pull({"w": np.ones(16, np.float32)})
        info = ps.metrics()
    assert info["calls"]["push_pull"] == 5 and info["calls"]["hello"] == 1
    assert info["errors"]["push_pull"] == 0  # (errors: see test_curve's observer)
    assert sum(info["latency"]["push_pull"]["counts"]) == 5
    assert info["retries"] == 0 and info["failovers"] == 0


def test_a_worker_serves_its_own_metrics(start_server: Any) -> None:
    server = start_server(mode="async")
    worker = subprocess.Popen(
        [sys.executable, "-m", "zps.cli.worker_main", "--servers", server.address,
         "--metrics-bind", "127.0.0.1:0", "--log-level", "info", "--slow", "0.02",
         "--epochs", "5", "--quiet"], stderr=subprocess.PIPE, text=True, env=python_env(),
        cwd=ROOT)
    try:
        assert worker.stderr is not None
        address = next(line.split("http://")[1].split("/")[0] for line in worker.stderr
                       if "metrics on http://" in line)
        found = wait_for(lambda: (s := scrape(address)).get(
            ("zps_client_calls_total", (("op", "push_pull"),)), 0) >= 3 and s,
            what="the worker's push_pulls to show")
        assert found[("zps_client_rank", ())] == 0
        assert found[("zps_client_call_seconds_count", (("op", "push_pull"),))] >= 3
    finally:
        worker.kill()
        worker.communicate()
