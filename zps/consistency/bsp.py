"""Synchronous rounds (BSP), per table, with no I/O: who must push before a round closes.

Each table (key) has its own sequence of rounds. A round closes once every live member
has pushed to it and, before the very first round closes, once at least ``min_members``
have joined (so one fast worker cannot close a round alone). A member that pushes again
before its round closed is queued for the next round: one contribution per member per
round, none lost and none applied twice.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

P = TypeVar("P")


@dataclass(frozen=True, slots=True)
class ClosedRound(Generic[P]):
    """A round that just closed: its number and the payloads pushed to it, in arrival order."""

    key: str
    round: int
    members: tuple[str, ...]
    payloads: tuple[P, ...]


@dataclass(slots=True)
class _KeyRounds(Generic[P]):
    closed: int = 0
    open: dict[str, P] = field(default_factory=dict)  # member -> payload, arrival order
    queued: deque[tuple[str, P]] = field(default_factory=deque)
    last_round: dict[str, int] = field(default_factory=dict)  # member -> round of its last push


class BspRounds(Generic[P]):
    """Round bookkeeping for every key; returns closed rounds for the caller to apply."""

    def __init__(self, min_members: int = 1) -> None:
        self.min_members = max(1, min_members)
        self.members: set[str] = set()
        self.started = False
        self._keys: dict[str, _KeyRounds[P]] = {}

    def join(self, member: str) -> None:
        """Add a live member. A join never closes a round (it only adds who must push)."""
        self.members.add(member)
        if len(self.members) >= self.min_members:
            self.started = True

    def leave(self, member: str) -> list[ClosedRound[P]]:
        """Remove a member (bye or declared dead); rounds waiting only on it close now."""
        self.members.discard(member)
        for rounds in self._keys.values():
            rounds.queued = deque((m, p) for m, p in rounds.queued if m != member)
        return [c for key in list(self._keys) for c in self._close_ready(key)]

    def push(self, key: str, member: str, payload: P) -> tuple[int, list[ClosedRound[P]]]:
        """Record ``member``'s push to ``key``; returns its round number and what closed."""
        rounds = self._keys.setdefault(key, _KeyRounds())
        if member in rounds.open:
            rounds.queued.append((member, payload))
            target = rounds.closed + 1 + sum(1 for m, _ in rounds.queued if m == member)
        else:
            rounds.open[member] = payload
            target = rounds.closed + 1
        rounds.last_round[member] = target
        return target, self._close_ready(key)

    def closed(self, key: str) -> int:
        """How many rounds of ``key`` have closed."""
        rounds = self._keys.get(key)
        return rounds.closed if rounds else 0

    def last_round(self, key: str, member: str) -> int:
        """The round ``member``'s latest push to ``key`` belongs to (0 if it never pushed)."""
        rounds = self._keys.get(key)
        return rounds.last_round.get(member, 0) if rounds else 0

    def pending(self, key: str) -> tuple[str, ...]:
        """Members the open round of ``key`` still waits for."""
        rounds = self._keys.get(key)
        pushed = rounds.open if rounds else {}
        return tuple(sorted(m for m in self.members if m not in pushed))

    def _close_ready(self, key: str) -> list[ClosedRound[P]]:
        rounds = self._keys[key]
        done: list[ClosedRound[P]] = []
        while rounds.open and self.started and self.members <= rounds.open.keys():
            rounds.closed += 1
            done.append(
                ClosedRound(key, rounds.closed, tuple(rounds.open), tuple(rounds.open.values()))
            )
            rounds.open = self._next_round(rounds)
        return done

    @staticmethod
    def _next_round(rounds: _KeyRounds[P]) -> dict[str, P]:
        """Move each member's oldest queued push into the new open round."""
        opened: dict[str, P] = {}
        kept: deque[tuple[str, P]] = deque()
        for member, payload in rounds.queued:
            if member in opened:
                kept.append((member, payload))
            else:
                opened[member] = payload
        rounds.queued = kept
        return opened
