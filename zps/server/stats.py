"""What ``stats`` reports: the server, its tables, members, counters and replication."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zps.server.state import Traffic

if TYPE_CHECKING:
    from zps.server.core import ServerCore


def stats_info(core: ServerCore, now: float) -> dict[str, Any]:
    """The ``stats`` reply's info: hello's fields, change number, replica, counters,
    tables, members, departed members."""
    state, replica, bsp = core.state, core.replica, core.rounds.bsp
    lead = state.lead_table or ""
    return {
        **core.hello_info(),
        "seq": state.store.seq,
        "rounds": core.rounds.most_closed(),
        "layout": state.layout,
        "shard": state.shard,
        "waiting": len(state.waiters),
        "replica": {"standby": replica.standby, "acked": replica.acked,
                    "lag": state.store.seq - replica.acked if replica.standby else None,
                    **core.replication_info()},
        "counters": dict(state.counters),
        "latency": state.latency.info(),
        "checkpoint": core.checkpoint_info(),
        "tables": [
            {
                "name": t.name,
                **t.describe(),
                "copies": getattr(t, "swaps", 0),
                **_traffic(state.traffic.get(t.name) or Traffic()),
                "rounds": bsp.closed(t.name),
                "waiting_for": list(bsp.pending(t.name)) if state.sync else [],
                "optimizer": t.optimizer.spec() if t.optimizer else None,
            }
            for t in state.store.tables()
        ],
        "members": [
            {
                "id": m.client_id,
                "role": m.role,
                "rank": state.ranks.get(m.client_id),
                "state": "live",
                "age": round(now - m.joined_at, 3),
                "silent": round(now - m.last_seen, 3),
                "clock": (bsp.last_round(lead, m.client_id) if state.sync
                          else state.clocks.clock(lead, m.client_id)),
                "straggles": bsp.straggles[m.client_id],
                "dropped": bsp.dropped[m.client_id],
            }
            for m in state.members
        ],
        "departed": list(state.departed),
    }


def _traffic(t: Traffic) -> dict[str, Any]:
    return {"bytes_in": t.wire_in, "bytes_out": t.wire_out,
            "compression": round(t.dense_in / t.wire_in, 3) if t.wire_in else 1.0,
            "pull_compression": round(t.dense_out / t.wire_out, 3) if t.wire_out else 1.0}
