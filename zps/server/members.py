"""Who is connected to a server: workers (who count in sync rounds) and observers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

Role = Literal["worker", "observer", "standby"]
ROLES: tuple[str, ...] = ("worker", "observer", "standby")


@dataclass(slots=True)
class Member:
    """One registered client and when the server last heard from it."""

    client_id: str
    role: Role
    joined_at: float
    last_seen: float
    pushes: int = 0
    pulls: int = 0
    key: str = ""  # with CURVE: the key that registered it (no other may act for it)


class Membership:
    """Registered clients, keyed by client id, with liveness by last-seen time."""

    def __init__(self) -> None:
        self._members: dict[str, Member] = {}

    def __contains__(self, client_id: str) -> bool:
        return client_id in self._members

    def get(self, client_id: str) -> Member | None:
        return self._members.get(client_id)

    def add(self, client_id: str, role: Role, now: float,
            key: str = "") -> tuple[Member, bool]:
        """Register (or refresh) a client; returns the member and whether it is new."""
        member = self._members.get(client_id)
        if member is not None:
            member.last_seen = now
            return member, False
        member = self._members[client_id] = Member(client_id, role, now, now, key=key)
        return member, True

    def remove(self, client_id: str) -> Member | None:
        return self._members.pop(client_id, None)

    def touch(self, client_id: str, now: float) -> None:
        member = self._members.get(client_id)
        if member is not None:
            member.last_seen = now

    def workers(self) -> list[Member]:
        return [m for m in self._members.values() if m.role == "worker"]

    def silent_since(self, deadline: float) -> list[Member]:
        """Members not heard from since ``deadline`` (a monotonic time)."""
        return [m for m in self._members.values() if m.last_seen < deadline]

    def __iter__(self) -> Iterator[Member]:
        """Every member (a snapshot: members may be removed while iterating)."""
        return iter(list(self._members.values()))


RANKS_KEPT = 4096  # ranks remembered for clients that left (to give them the same again)


class Ranks:
    """Worker ranks, kept by the first server (the others only note what they are told).

    A rank a worker was configured with is taken as given (a clash with a live worker is
    logged). A worker that held a rank asks for it again (a hint) when it registers anew,
    e.g. after a failover, and keeps it unless a live worker holds it now; anyone else
    gets the lowest rank no live worker holds, so a replacement takes the shard of one
    that died. A returning client id gets its old rank if it is free."""

    def __init__(self) -> None:
        self._of: dict[str, int] = {}

    def get(self, client_id: str) -> int | None:
        return self._of.get(client_id)

    def holder(self, rank: int, live: set[str], besides: str) -> str | None:
        return next((c for c, r in self._of.items() if r == rank and c in live
                     and c != besides), None)

    def assign(self, client_id: str, wanted: int | None, live: set[str],
               hint: int | None = None) -> int:
        """The rank of ``client_id``: ``wanted`` (configured), else ``hint`` or its old
        rank if free, else the lowest free one."""
        held = {rank for cid, rank in self._of.items() if cid in live and cid != client_id}
        rank = wanted
        if rank is None:
            for candidate in (hint, self._of.get(client_id)):
                if candidate is not None and candidate not in held:
                    rank = candidate
                    break
        if rank is None:
            rank = next(r for r in range(len(held) + 1) if r not in held)
        if len(self._of) >= RANKS_KEPT and client_id not in self._of:
            self._of = {cid: r for cid, r in self._of.items() if cid in live}
        self._of[client_id] = rank
        return rank

    def note(self, client_id: str, rank: int) -> None:
        """Record a rank the first server gave (on the other servers, for ``stats``)."""
        self._of[client_id] = rank
