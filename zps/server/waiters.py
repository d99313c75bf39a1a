"""Replies that must wait, and the conditions they wait for (sans-IO).

A pull in sync mode waits for its worker's round to close, one under SSP for the slowest
worker to catch up, an update with ``--replication sync`` for the standby's
acknowledgement, a watch for this standby's takeover. Each is a ``Deferred``: the request's
routing token, its conditions in order, and how to build the reply. The registry files a
deferred under the key of its first unmet condition; whoever changes what a key stands for
(a round of table ``w`` closed, an ack arrived) calls ``wake(key)``. Deferreds whose
conditions all hold move to ``ready``, failed ones to ``failed``; the server core turns
both into replies. There are no futures and no tasks here: the reply is built at the
moment it can be sent, from the state at that moment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ACKED = "\x00acked"  # key: the standby acknowledged more changes (never a table name)
PROMOTED = "\x00promoted"  # key: this standby took over

MAX_PER_CLIENT = 4096  # replies one client may have waiting


@dataclass(slots=True)
class Condition:
    """``ready()`` tells whether it holds; ``key`` is what wakes a re-check."""

    key: str
    ready: Callable[[], bool]


@dataclass(slots=True, eq=False)
class Deferred:
    """A reply waiting for its conditions. ``tag``: at most one deferred per (client, tag)
    is kept; a newer one replaces the older (a watch re-armed)."""

    peer: Any
    client: str
    request_id: int
    conditions: list[Condition]
    build: Callable[[], Any]  # -> (Reply, leases), called once the conditions hold
    tag: str = ""
    filed: str = field(default="", init=False)  # the key it is waiting under


class Waiters:
    """Deferred replies by the key of the condition each waits for."""

    def __init__(self, max_per_client: int = MAX_PER_CLIENT) -> None:
        self._by_key: dict[str, list[Deferred]] = {}
        self._by_client: dict[str, int] = {}
        self._tagged: dict[tuple[str, str], Deferred] = {}
        self._max = max_per_client
        self.ready: list[Deferred] = []
        self.failed: list[tuple[Deferred, str, str]] = []

    def __len__(self) -> int:
        return sum(self._by_client.values())

    def add(self, deferred: Deferred) -> bool:
        """File ``deferred``; True if it is already ready (then it is in ``ready``).
        Returns False and fails it when its client has too many replies waiting."""
        if self._by_client.get(deferred.client, 0) >= self._max:
            self.failed.append((deferred, "too_large", "too many requests of this client "
                                                       "are waiting; wait for their replies"))
            return False
        if deferred.tag:
            old = self._tagged.pop((deferred.client, deferred.tag), None)
            if old is not None:
                self._remove(old)
            self._tagged[(deferred.client, deferred.tag)] = deferred
        self._by_client[deferred.client] = self._by_client.get(deferred.client, 0) + 1
        return self._file(deferred)

    def wake(self, key: str) -> None:
        """Re-check the deferreds waiting under ``key``."""
        waiting = self._by_key.pop(key, None)
        for deferred in waiting or ():
            deferred.filed = ""
            self._file(deferred)

    def wake_all(self) -> None:
        for key in list(self._by_key):
            self.wake(key)

    def fail_client(self, client: str, code: str, message: str) -> None:
        """Fail every reply ``client`` has waiting (it left or was declared dead)."""
        self._fail_where(lambda d: d.client == client, code, message)

    def fail_request(self, client: str, request_id: int, code: str, message: str) -> None:
        self._fail_where(lambda d: d.client == client and d.request_id == request_id,
                         code, message)

    def fail_all(self, code: str, message: str) -> None:
        self._fail_where(lambda d: True, code, message)

    def _fail_where(self, match: Callable[[Deferred], bool], code: str, message: str) -> None:
        for waiting in list(self._by_key.values()):
            for deferred in [d for d in waiting if match(d)]:
                self._remove(deferred)
                self.failed.append((deferred, code, message))

    def _file(self, deferred: Deferred) -> bool:
        for condition in deferred.conditions:
            if not condition.ready():
                deferred.filed = condition.key
                self._by_key.setdefault(condition.key, []).append(deferred)
                return False
        self._done(deferred)
        self.ready.append(deferred)
        return True

    def _remove(self, deferred: Deferred) -> None:
        waiting = self._by_key.get(deferred.filed)
        if waiting is not None and deferred in waiting:
            waiting.remove(deferred)
            if not waiting:
                del self._by_key[deferred.filed]
        deferred.filed = ""
        self._done(deferred)

    def _done(self, deferred: Deferred) -> None:
        left = self._by_client.get(deferred.client, 1) - 1
        if left:
            self._by_client[deferred.client] = left
        else:
            self._by_client.pop(deferred.client, None)
        if deferred.tag and self._tagged.get((deferred.client, deferred.tag)) is deferred:
            del self._tagged[(deferred.client, deferred.tag)]
