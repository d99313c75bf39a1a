"""What a client counts about itself (sans-IO): calls and errors by op, how long calls
took, retries and failovers. ``Client.metrics()`` returns it; ``zps-worker --metrics-bind``
serves it to Prometheus."""

from __future__ import annotations

from typing import Any

from zps.latency import Latencies
from zps.protocol import Op


class ClientMetrics:
    """Counters and latency histograms of one client (every op's entry exists from the
    start, so a reader on another thread never sees the dicts change size)."""

    def __init__(self) -> None:
        self.calls = dict.fromkeys((op.value for op in Op), 0)
        self.errors = dict.fromkeys(self.calls, 0)
        self.latency = Latencies(self.calls)
        self.retries = 0  # requests sent again after a timeout
        self.failovers = 0  # shards switched to their standby

    def done(self, op: Op, started: float, now: float, failed: bool) -> None:
        """A call of ``op``, begun at ``started`` (0: untimed), finished at ``now``."""
        self.calls[op.value] += 1
        if failed:
            self.errors[op.value] += 1
        if started:
            self.latency.observe(op.value, now - started)

    def info(self) -> dict[str, Any]:
        return {"calls": dict(self.calls), "errors": dict(self.errors),
                "latency": self.latency.info(), "retries": self.retries,
                "failovers": self.failovers}
