"""Bounded staleness (SSP), per table, with no I/O: may a worker read now?

Every member has a clock per table: how many of its pushes to that table were applied. A
member at clock c may read (its pull is answered) once the slowest live member has
reached c - K. Dead or departed members are forgotten, so they never hold the others;
a member that joins late starts at the slowest live member's clock, not at 0.
"""

from __future__ import annotations


class SspClocks:
    """Per-table clocks of the live members and the staleness bound ``staleness`` (K)."""

    def __init__(self, staleness: int) -> None:
        if staleness < 0:
            raise ValueError("the staleness bound must be >= 0")
        self.staleness = staleness
        self.members: set[str] = set()
        self._clocks: dict[str, dict[str, int]] = {}

    def join(self, member: str) -> None:
        """Add a live member, at the slowest live member's clock of every table."""
        if member in self.members:
            return
        self.members.add(member)
        for clocks in self._clocks.values():
            clocks[member] = min(clocks.values(), default=0)

    def leave(self, member: str) -> None:
        """Forget a member: it never holds anyone again."""
        self.members.discard(member)
        for clocks in self._clocks.values():
            clocks.pop(member, None)

    def tick(self, key: str, member: str) -> int:
        """Count one applied push of ``member`` to ``key``; returns its new clock."""
        clocks = self._clocks.setdefault(key, dict.fromkeys(self.members, 0))
        clocks[member] = clocks.get(member, min(clocks.values(), default=0)) + 1
        return clocks[member]

    def clock(self, key: str, member: str) -> int:
        return self._clocks.get(key, {}).get(member, 0)

    def slowest(self, key: str) -> int:
        """The lowest clock of a live member on ``key`` (0 if none)."""
        clocks = self._clocks.get(key, {})
        return min((c for m, c in clocks.items() if m in self.members), default=0)

    def may_read(self, key: str, member: str) -> bool:
        """True if ``member`` is at most ``staleness`` clocks ahead of the slowest."""
        return self.clock(key, member) - self.slowest(key) <= self.staleness
