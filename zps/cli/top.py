"""``zps top``: a live view of a running cluster, refreshed in place (rich).

Per server: role, mode, epoch, rounds and rounds/s, bytes in and out per second, requests
and errors, the 99th percentile of push latency (a histogram bucket's bound), replication
lag; per member: rank, state, clock, straggles, silence. Rates are the
change of the servers' counters between two refreshes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from itertools import zip_longest
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from zps.latency import percentile

Stats = list[dict[str, Any]]


def top(fetch: Callable[[], Stats], interval: float, count: int | None,
        console: Console | None = None) -> None:
    """Show ``fetch()`` every ``interval`` seconds, ``count`` times (None: until Ctrl-C)."""
    console = console or Console()
    tick = threading.Event()  # never set: its wait is the refresh interval
    before: Stats | None = None
    shown = 0
    with Live(console=console, auto_refresh=False, transient=False) as live:
        while count is None or shown < count:
            now = fetch()
            live.update(view(now, before, interval), refresh=True)
            before, shown = now, shown + 1
            if count is None or shown < count:
                tick.wait(interval)


def view(now: Stats, before: Stats | None, interval: float) -> Group:
    """The tables of one refresh."""
    servers = Table(title="zps servers", expand=False)
    for column in ("address", "role", "mode", "epoch", "rounds", "rounds/s", "in MB/s",
                   "out MB/s", "requests", "errors", "p99 ms", "repl lag"):
        servers.add_column(column, justify="left" if column in ("address", "role", "mode")
                           else "right")
    members = Table(title="members")
    for column in ("server", "member", "rank", "role", "state", "clock", "straggles",
                   "silent s"):
        members.add_column(column)
    for index, info in enumerate(now):
        old = before[index] if before and index < len(before) else None
        counters = info.get("counters", {})
        lag = (info.get("replica") or {}).get("lag")
        servers.add_row(str(info.get("address")), str(info.get("role")), str(info.get("mode")),
                        str(info.get("epoch")), str(info.get("rounds")),
                        _rate(info, old, ("rounds",), interval, 1.0),
                        _rate(info, old, ("counters", "bytes_in"), interval, 1e6),
                        _rate(info, old, ("counters", "bytes_out"), interval, 1e6),
                        str(counters.get("requests")), str(counters.get("errors")),
                        _p99(info), "-" if lag is None else str(lag))
        for member in info.get("members", []):
            rank = member.get("rank")
            members.add_row(str(info.get("address")), str(member.get("id")),
                            "-" if rank is None else str(rank), str(member.get("role")),
                            str(member.get("state")),
                            str(member.get("clock")), str(member.get("straggles")),
                            f"{float(member.get('silent', 0.0)):.1f}")
    return Group(servers, members)


def _p99(info: dict[str, Any]) -> str:
    """The 99th percentile (a bucket bound) of push and push_pull latency so far."""
    latency = info.get("latency") or {}
    counts = [sum(c) for c in zip_longest(*(latency.get(op, {}).get("counts", [])
                                            for op in ("push", "push_pull", "push_rows")),
                                          fillvalue=0)]
    bound = percentile({"counts": counts}, latency.get("buckets", []), 0.99)
    return "-" if bound is None else f"<={bound * 1000:g}"


def _rate(now: dict[str, Any], old: dict[str, Any] | None, path: tuple[str, ...],
          interval: float, unit: float) -> str:
    if old is None:
        return "-"
    a, b = _get(now, path), _get(old, path)
    if not isinstance(a, int | float) or not isinstance(b, int | float):
        return "-"
    return f"{max(0.0, a - b) / interval / unit:.2f}"


def _get(info: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = info
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value
