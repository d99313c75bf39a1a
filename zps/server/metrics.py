"""Prometheus ``/metrics`` for a running server (``zps-server --metrics-bind HOST:PORT``).

An HTTP thread (``zps.exposition``) answers scrapes. Each scrape reads the server's
``stats`` once, on the server's event loop (so it never races the loop, and costs the hot
path nothing), and turns it into metric families: the counters, per-table traffic and
compression, members by state, the SSP clock spread, stragglers, replication lag,
request and round latency histograms, checkpoint age.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from zps.exposition import MetricsEndpoint, histograms

SCRAPE_TIMEOUT = 5.0  # seconds a scrape waits for the event loop


def server_endpoint(bind: str, loop: asyncio.AbstractEventLoop,
                    stats: Callable[[], dict[str, Any]]) -> MetricsEndpoint:
    """``/metrics`` of a server: each scrape reads ``stats()`` once, on ``loop``."""
    def read() -> dict[str, Any]:
        done: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()

        def take() -> None:
            try:
                done.set_result(stats())
            except BaseException as exc:  # handed to the scrape, which answers 500
                done.set_exception(exc)
        loop.call_soon_threadsafe(take)
        return done.result(timeout=SCRAPE_TIMEOUT)
    return MetricsEndpoint(bind, lambda: families(read()))


def families(info: dict[str, Any]) -> Iterator[Metric]:
    """Metric families from one ``stats`` answer."""
    for key, value in sorted(info.get("counters", {}).items()):
        if isinstance(value, int | float):
            yield CounterMetricFamily(f"zps_{key}", f"zps server counter: {key}", value=value)
    gauges = {"epoch": ("zps_epoch", "the primary's epoch (takeovers so far + 1)"),
              "seq": ("zps_seq", "changes applied"),
              "rounds": ("zps_job_rounds", "the most rounds any table has closed"),
              "waiting": ("zps_waiting", "requests waiting for a round or a read")}
    for key, (name, text) in gauges.items():
        if isinstance(info.get(key), int | float):
            yield GaugeMetricFamily(name, text, value=info[key])
    role = GaugeMetricFamily("zps_role", "1 for this server's role", labels=["role"])
    role.add_metric([str(info.get("role"))], 1)
    yield role
    yield from _tables(info.get("tables", []))
    yield from _members(info.get("members", []))
    replica = info.get("replica") or {}
    for key in ("lag", "acked"):
        if isinstance(replica.get(key), int | float):
            yield GaugeMetricFamily(f"zps_replication_{key}", f"replication {key} (changes)",
                                    value=replica[key])
    yield from _latency(info.get("latency") or {})
    yield from _checkpoint(info.get("checkpoint"))


def _latency(latency: dict[str, Any]) -> Iterator[Metric]:
    yield histograms("zps_request_seconds", "from a request's arrival to its reply (waits in "
                     "rounds included), by op", latency, only=lambda name: name != "round")
    yield histograms("zps_round_seconds", "sync rounds: from the first push to the close",
                     {**latency, "": latency.get("round", {})}, label="",
                     only=lambda name: name == "")


def _checkpoint(checkpoint: dict[str, Any] | None) -> Iterator[Metric]:
    if not checkpoint:
        return
    for key, name, text in (
            ("age", "zps_checkpoint_age_seconds", "since the newest checkpoint was written "
                                                  "(or the server started)"),
            ("seconds", "zps_checkpoint_seconds", "how long the newest checkpoint took"),
            ("unsaved", "zps_checkpoint_unsaved_changes", "changes since the newest one")):
        yield GaugeMetricFamily(name, text, value=checkpoint[key])


def _tables(tables: list[dict[str, Any]]) -> Iterator[Metric]:
    counters = {"bytes_in": "bytes pushed into the table", "bytes_out": "bytes pulled"}
    gauges = {"version": "the table's version", "rounds": "sync rounds closed",
              "compression": "push compression ratio (raw / sent)",
              "pull_compression": "pull compression ratio", "rows": "rows stored",
              "admitted": "rows admitted", "evicted": "rows evicted",
              "pending": "ids counted, not yet admitted"}
    for kind, described in ((CounterMetricFamily, counters), (GaugeMetricFamily, gauges)):
        for key, text in described.items():
            family = kind(f"zps_table_{key}", text, labels=["table"])
            for table in tables:
                if isinstance(table.get(key), int | float):
                    family.add_metric([str(table["name"])], table[key])
            yield family


def _members(members: list[dict[str, Any]]) -> Iterator[Metric]:
    by_state: dict[str, int] = {}
    for member in members:
        by_state[str(member.get("state"))] = by_state.get(str(member.get("state")), 0) + 1
    family = GaugeMetricFamily("zps_members", "members by state", labels=["state"])
    for state, count in sorted(by_state.items()):
        family.add_metric([state], count)
    yield family
    clocks = [m["clock"] for m in members
              if m.get("state") == "live" and isinstance(m.get("clock"), int)]
    yield GaugeMetricFamily("zps_ssp_clock_spread", "fastest minus slowest live clock",
                            value=max(clocks) - min(clocks) if clocks else 0)
    yield CounterMetricFamily("zps_straggles", "rounds closed without a member (all members)",
                              value=sum(int(m.get("straggles", 0)) for m in members))
