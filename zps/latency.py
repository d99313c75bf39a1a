"""Latency histograms (sans-IO): how long requests took, by op, and how long rounds waited
(on servers), or how long calls took (on clients).

Cheap enough for every request (a bisect and an increment); ``stats`` reports the counts,
``/metrics`` turns them into Prometheus histograms and ``zps top`` into percentiles.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

# Upper bounds in seconds (Prometheus' ``le``), 100 us to 10 s; anything slower is +Inf.
BUCKETS: tuple[float, ...] = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                              0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """Counts of observations per bucket (the last one: above every bound), and their sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds

    def info(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "sum": round(self.total, 6)}


class Latencies:
    """One histogram per name (an op, or ``round``); ``names`` made up front."""

    def __init__(self, names: Iterable[str] = ()) -> None:
        self.by_name: dict[str, Histogram] = {name: Histogram() for name in names}

    def observe(self, name: str, seconds: float) -> None:
        histogram = self.by_name.get(name)
        if histogram is None:
            histogram = self.by_name[name] = Histogram()
        histogram.observe(seconds)

    def info(self) -> dict[str, Any]:
        """``{"buckets": [...], NAME: {"counts": [...], "sum": s}, ...}``."""
        used = sorted((n, h) for n, h in self.by_name.items() if any(h.counts))
        return {"buckets": list(BUCKETS), **{name: h.info() for name, h in used}}


def percentile(info: dict[str, Any], buckets: list[float], q: float) -> float | None:
    """The bucket bound below which a fraction ``q`` of one histogram's observations fall
    (``inf`` past the last bound; None with no observations)."""
    counts = info.get("counts") or []
    total = sum(counts)
    if not total:
        return None
    seen = 0
    for bound, count in zip([*buckets, float("inf")], counts, strict=False):
        seen += count
        if seen >= q * total:
            return bound
    return float("inf")
