"""What one server knows, shared by the parts of its core (sans-IO).

The core is split by concern (push acceptance, sync rounds, reads, replica state, stats);
each part works on this one ``ServerState``, which holds no behaviour beyond small
lookups. It imports neither asyncio nor zmq.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from zps.config import ServerConfig, parse_mode
from zps.consistency import SspClocks
from zps.consistency.rates import Rates
from zps.latency import Latencies
from zps.server.members import Membership, Ranks
from zps.server.waiters import Waiters
from zps.store import RequestLedger, Store

COUNTERS = ("requests", "batches", "errors", "forbidden", "refused_keys", "pushes",
            "duplicates", "dropped", "pulls", "rounds", "timeouts", "heartbeats", "dead",
            "bytes_in", "bytes_out")
DEPARTED_KEPT = 100  # members that left or died, listed in stats


@dataclass(slots=True)
class Traffic:
    """Bytes of one table: in on the wire and as dense values, out likewise."""

    wire_in: int = 0
    dense_in: int = 0
    wire_out: int = 0
    dense_out: int = 0


@dataclass(slots=True)
class ServerState:
    """The state every part of the core reads and writes."""

    config: ServerConfig
    server_id: str
    kind: str = ""  # sync | async | ssp
    store: Store = field(default_factory=Store)
    ledger: RequestLedger = field(default_factory=RequestLedger)
    members: Membership = field(default_factory=Membership)
    ranks: Ranks = field(default_factory=Ranks)
    latency: Latencies = field(default_factory=Latencies)  # by op, and "round"
    waiters: Waiters = field(default_factory=Waiters)
    clocks: SspClocks = field(default_factory=lambda: SspClocks(0))
    rates: Rates = field(default_factory=lambda: Rates("constant"))
    role: str = "primary"  # or "standby" until it takes over
    epoch: int = 1
    layout: list[int] | None = None  # [shards, chunk_bytes] the cluster's clients use
    shard: int | None = None  # this server's index in that layout
    lead_table: str | None = None  # the first table: its rounds are the job's rounds
    # What each worker last read of each table: the round (sync) or version (others).
    last_read: dict[tuple[str, str], int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    traffic: dict[str, Traffic] = field(default_factory=dict)
    departed: deque[dict[str, str]] = field(default_factory=lambda: deque(maxlen=DEPARTED_KEPT))
    # Wall-clock seconds, for row tables' recency: it travels with each row change, so a
    # standby (and a restore) keep the same ages.
    clock: Callable[[], float] = time.time

    @classmethod
    def of(cls, config: ServerConfig, server_id: str) -> ServerState:
        kind, staleness = parse_mode(config.mode)
        return cls(config, server_id, kind,
                   store=Store(config.log_entries, config.log_bytes),
                   clocks=SspClocks(staleness),
                   rates=Rates(config.lr_rule, config.lr_scale),
                   role="standby" if config.standby_of else "primary")

    @property
    def sync(self) -> bool:
        return self.kind == "sync"

    def traffic_of(self, table: str) -> Traffic:
        found = self.traffic.get(table)
        if found is None:
            found = self.traffic[table] = Traffic()
        return found

    def info(self) -> dict[str, Any]:
        """What every reply says about this server."""
        return {"sid": self.server_id, "epoch": self.epoch}
