"""Prometheus metrics over HTTP (``/metrics``), for servers and workers alike.

An HTTP thread of prometheus-client answers each scrape by calling ``collect()``, which
returns the metric families of that moment. Histograms come from ``zps.latency``'s counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import accumulate
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

JOIN_SECONDS = 5.0  # how long close() waits for a scrape in progress


def parse_bind(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (port 0 picks a free one); ``ValueError`` saying the form."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} must look like HOST:PORT, e.g. 127.0.0.1:9100")
    return host, int(port)


class MetricsEndpoint:
    """``/metrics`` served from its own thread until ``close()``; ``OSError`` if the
    address cannot be bound."""

    def __init__(self, bind: str, collect: Callable[[], Iterable[Metric]]) -> None:
        host, port = parse_bind(bind)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(collect))  # type: ignore[arg-type]
        self._http, self._thread = start_http_server(port, host, registry)
        self.address = f"{host}:{self._http.server_port}"

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(JOIN_SECONDS)


class _Collector:
    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Metric]:
        yield from self._collect()


def histograms(name: str, text: str, latency: dict[str, Any], label: str = "op",
               only: Callable[[str], bool] = lambda _: True) -> HistogramMetricFamily:
    """One histogram family from a ``Latencies.info()``: a labelled histogram per name
    ``only`` accepts (``label=""``: a single unlabelled one)."""
    bounds = [*(str(b) for b in latency.get("buckets", [])), "+Inf"]
    family = HistogramMetricFamily(name, text, labels=[label] if label else None)
    for key, histogram in latency.items():
        if key == "buckets" or not only(key) or len(histogram.get("counts", [])) != len(bounds):
            continue
        cumulative = list(zip(bounds, accumulate(histogram["counts"]), strict=True))
        family.add_metric([key] if label else [], cumulative, histogram["sum"])
    return family


def client_families(info: dict[str, Any], rank: int | None) -> Iterator[Metric]:
    """A client's own metrics (``Client.metrics()``), for ``zps-worker --metrics-bind``."""
    for key, text in (("calls", "calls finished, by op"), ("errors", "calls failed, by op")):
        family = CounterMetricFamily(f"zps_client_{key}", text, labels=["op"])
        for op, count in sorted(info[key].items()):
            if count:
                family.add_metric([op], count)
        yield family
    yield histograms("zps_client_call_seconds", "from a call's start to its result, by op",
                     info["latency"])
    yield CounterMetricFamily("zps_client_retries", "requests sent again after a timeout",
                              value=info["retries"])
    yield CounterMetricFamily("zps_client_failovers", "shards switched to their standby",
                              value=info["failovers"])
    if rank is not None:
        yield GaugeMetricFamily("zps_client_rank", "this worker's rank", value=rank)
