"""Prometheus /metrics of a real server: scraped over HTTP, parsed with prometheus-client's
own parser, counters moving as pushes happen."""

from __future__ import annotations

import urllib.request
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import zps
from zps.server.metrics import parse_bind

from .conftest import run_cli


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
