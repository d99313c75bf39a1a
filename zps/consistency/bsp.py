"""Synchronous rounds (BSP), per table, with no I/O: who must push before a round closes.

Each table (key) has its own sequence of rounds. A round closes once every live member
has pushed to it, or, with a quorum K (backup workers), once the first K have; before the
very first round closes, at least ``min_members`` must have joined (so one fast worker
cannot close a round alone). A round can also be closed early from outside (the server's
``--round-timeout``). Members missing from a closed round are counted as stragglers.

A push says which round its worker last saw closed (``based_on``). A push based on a round
that is no longer the latest is *late*: it is dropped and counted, or, with
``late="fold"``, added to the open round. A member that pushes again before its round
closed is queued for the next round: one contribution per member per round, none lost
and none applied twice.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

P = TypeVar("P")
LatePolicy = Literal["drop", "fold"]


@dataclass(frozen=True, slots=True)
class ClosedRound(Generic[P]):
    """A round that just closed: its number, who pushed (in order) and who was missing."""

    key: str
    round: int
    members: tuple[str, ...]
    payloads: tuple[P, ...]
    missing: tuple[str, ...] = ()


@dataclass(slots=True)
class _KeyRounds(Generic[P]):
    closed: int = 0
    open: dict[str, P] = field(default_factory=dict)  # member -> payload, arrival order
    queued: deque[tuple[str, P]] = field(default_factory=deque)
    last_round: dict[str, int] = field(default_factory=dict)  # member -> round of its last push


class BspRounds(Generic[P]):
    """Round bookkeeping for every key; returns closed rounds for the caller to apply."""

    def __init__(self, min_members: int = 1, quorum: int | None = None,
                 late: LatePolicy = "drop") -> None:
        self.min_members = max(1, min_members)
        self.quorum = quorum
        self.late = late
        self.members: set[str] = set()
        self.started = False
        self.dropped: Counter[str] = Counter()  # late pushes dropped, per member
        self.straggles: Counter[str] = Counter()  # rounds closed without them, per member
        self._keys: dict[str, _KeyRounds[P]] = {}

    def join(self, member: str) -> None:
        """Add a live member. A join never closes a round (it only adds who must push)."""
        self.members.add(member)
        if len(self.members) >= self.min_members:
            self.started = True

    def leave(self, member: str) -> tuple[list[ClosedRound[P]], list[tuple[str, P]]]:
        """Remove a member (bye or declared dead) and what is kept about it; rounds waiting
        only on it close now. Its push already in an open round is applied with that round;
        its queued pushes for later rounds are dropped and returned as (key, payload), so
        the caller can fail their replies. If it comes back, it starts afresh."""
        self.members.discard(member)
        self.dropped.pop(member, None)
        self.straggles.pop(member, None)
        dropped: list[tuple[str, P]] = []
        for key, rounds in self._keys.items():
            dropped.extend((key, p) for m, p in rounds.queued if m == member)
            rounds.queued = deque((m, p) for m, p in rounds.queued if m != member)
            rounds.last_round.pop(member, None)
        return [c for key in list(self._keys) for c in self._close_ready(key)], dropped

    def push(self, key: str, member: str, payload: P,
             based_on: int | None = None) -> tuple[int, list[ClosedRound[P]]]:
        """Record ``member``'s push to ``key``; returns its round and what closed.

        The round is 0 when the push was late and dropped (nothing to wait for).
        """
        rounds = self._keys.setdefault(key, _KeyRounds())
        late = based_on is not None and based_on < rounds.closed and member not in rounds.open
        if late and self.late == "drop":
            self.dropped[member] += 1
            return 0, []
        if member in rounds.open:
            rounds.queued.append((member, payload))
            target = rounds.closed + 1 + sum(1 for m, _ in rounds.queued if m == member)
        else:
            rounds.open[member] = payload
            target = rounds.closed + 1
        rounds.last_round[member] = target
        return target, self._close_ready(key)

    def close_now(self, key: str) -> list[ClosedRound[P]]:
        """Close the open round of ``key`` with whoever has pushed (a round timeout)."""
        rounds = self._keys.get(key)
        if rounds is None or not rounds.open:
            return []
        return [self._close(key, rounds), *self._close_ready(key)]

    def start(self) -> list[ClosedRound[P]]:
        """Start rounds without waiting for ``min_members`` (e.g. after a takeover);
        returns the rounds that close now."""
        self.started = True
        return [c for key in list(self._keys) for c in self._close_ready(key)]

    def set_closed(self, key: str, rounds_closed: int) -> None:
        """Start ``key`` at ``rounds_closed`` closed rounds with nothing open (a standby
        taking over, or a restored checkpoint, resumes the round count)."""
        self._keys[key] = _KeyRounds(closed=rounds_closed)

    def closed(self, key: str) -> int:
        """How many rounds of ``key`` have closed."""
        rounds = self._keys.get(key)
        return rounds.closed if rounds else 0

    def open_payloads(self, key: str) -> list[P]:
        """The payloads in the open round of ``key``, in arrival order."""
        rounds = self._keys.get(key)
        return list(rounds.open.values()) if rounds else []

    def open_count(self, key: str) -> int:
        """How many members have pushed to the open round of ``key``."""
        rounds = self._keys.get(key)
        return len(rounds.open) if rounds else 0

    def last_round(self, key: str, member: str) -> int:
        """The round ``member``'s latest push to ``key`` belongs to (0 if it never pushed)."""
        rounds = self._keys.get(key)
        return rounds.last_round.get(member, 0) if rounds else 0

    def pending(self, key: str) -> tuple[str, ...]:
        """Members the open round of ``key`` still waits for."""
        rounds = self._keys.get(key)
        pushed = rounds.open if rounds else {}
        return tuple(sorted(m for m in self.members if m not in pushed))

    def _ready(self, rounds: _KeyRounds[P]) -> bool:
        if not rounds.open or not self.started:
            return False
        if self.members <= rounds.open.keys():
            return True
        return self.quorum is not None and len(rounds.open) >= min(self.quorum, len(self.members))

    def _close_ready(self, key: str) -> list[ClosedRound[P]]:
        rounds = self._keys[key]
        done: list[ClosedRound[P]] = []
        while self._ready(rounds):
            done.append(self._close(key, rounds))
        return done

    def _close(self, key: str, rounds: _KeyRounds[P]) -> ClosedRound[P]:
        rounds.closed += 1
        missing = tuple(sorted(self.members - rounds.open.keys()))
        self.straggles.update(missing)
        closed = ClosedRound(key, rounds.closed, tuple(rounds.open),
                             tuple(rounds.open.values()), missing)
        rounds.open = self._next_round(rounds)
        return closed

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
