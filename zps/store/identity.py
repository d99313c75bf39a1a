"""Request identity: which of a client's requests were applied, or wait in a round.

One structure answers "already applied?" and "pending in round r?" for every update a
server receives, travels in snapshots and checkpoints, and stays small however long the
run. It rests on two facts about clients:

- a client numbers its requests in increasing order (across lives too: ``hello`` tells a
  returning client the highest id its server has seen from it);
- each update request carries the client's *watermark*: its lowest request id still
  unfinished. Everything below it was answered or given up, so it will never be sent
  again and needs no entry.

So per (client, table) the ledger keeps only the ids at or above the watermark that are
applied (at most the client's requests in flight, bounded by ``window``) and those pending
in an open sync round, with the round. Anything below the watermark counts as done.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from zps.store.errors import RequestWindowError

NEW = -1  # status: never seen; apply it
APPLIED = 0  # status: applied (or handled) already; apply nothing
# A status > 0 is the sync round the request waits in.

ID_WINDOW = 1 << 16  # unfinished requests a client may have above its watermark
MAX_CLIENTS = 1 << 16


@dataclass(slots=True)
class _Client:
    watermark: int = 0
    top: int = 0  # the highest request id recorded
    keys: dict[str, dict[int, int]] = field(default_factory=dict)  # table -> id -> status


class RequestLedger:
    """Applied and pending request ids per (client, table), above each client's watermark."""

    def __init__(self, window: int = ID_WINDOW, max_clients: int = MAX_CLIENTS) -> None:
        self._clients: OrderedDict[str, _Client] = OrderedDict()
        self._window = window
        self._max_clients = max_clients

    def __len__(self) -> int:
        return len(self._clients)

    def advance(self, client: str, watermark: int) -> None:
        """Note that every request of ``client`` below ``watermark`` is finished."""
        state = self._client(client)
        if watermark > state.watermark:
            state.watermark = watermark

    def check(self, request_id: int, watermark: int) -> None:
        """Refuse (``RequestWindowError``) a request whose client claims more unfinished
        requests than the ledger keeps track of."""
        if request_id - watermark > self._window:
            raise RequestWindowError(
                f"request id {request_id} is more than {self._window} above the client's "
                f"watermark {watermark}: too many unfinished requests")

    def status(self, client: str, table: str, request_id: int) -> int:
        """``NEW``, ``APPLIED``, or the round (> 0) the request waits in."""
        state = self._clients.get(client)
        if state is None:
            return NEW
        if request_id < state.watermark:
            return APPLIED
        ids = state.keys.get(table)
        return NEW if ids is None else ids.get(request_id, NEW)

    def pending(self, client: str, table: str, request_id: int, round_: int) -> None:
        """The request waits in sync round ``round_`` (> 0) of ``table``."""
        self._record(client, table, request_id, round_)

    def applied(self, client: str, table: str, request_id: int) -> None:
        """The request changed ``table`` (or was handled for good: a late push dropped)."""
        self._record(client, table, request_id, APPLIED)

    def discard(self, client: str, table: str, request_id: int) -> None:
        """Forget a pending request that was never applied (its round dropped it): the
        client may send it again."""
        state = self._clients.get(client)
        ids = state.keys.get(table) if state is not None else None
        if ids is not None and ids.get(request_id, APPLIED) > 0:
            del ids[request_id]

    def top(self, client: str) -> int:
        """The highest request id recorded for ``client`` (0 if none)."""
        state = self._clients.get(client)
        return state.top if state is not None else 0

    def forget(self, client: str) -> None:
        """Drop everything kept about ``client`` (it said goodbye: it sends nothing more)."""
        self._clients.pop(client, None)

    def _client(self, client: str) -> _Client:
        state = self._clients.get(client)
        if state is None:
            state = self._clients[client] = _Client()
            if len(self._clients) > self._max_clients:
                self._clients.popitem(last=False)
        else:
            self._clients.move_to_end(client)
        return state

    def _record(self, client: str, table: str, request_id: int, status: int) -> None:
        state = self._client(client)
        ids = state.keys.get(table)
        if ids is None:
            ids = state.keys[table] = {}
        elif len(ids) > 8:  # prune what fell below the watermark, now and then
            _prune(ids, state.watermark)
        ids[request_id] = status
        if request_id > state.top:
            state.top = request_id

    # ------------------------------------------------------------ snapshots

    def export(self) -> list[Any]:
        """The applied state as plain lists (pending requests are not applied, so a
        snapshot or checkpoint must not claim them): [[client, watermark, top,
        [[table, [ids...]], ...]], ...]."""
        rows: list[Any] = []
        for client, state in self._clients.items():
            keys = []
            for table, ids in state.keys.items():
                done = sorted(i for i, s in ids.items() if s == APPLIED and i >= state.watermark)
                if done:
                    keys.append([table, done])
            rows.append([client, state.watermark, state.top, keys])
        return rows

    @classmethod
    def restore(cls, rows: Any, window: int = ID_WINDOW,
                max_clients: int = MAX_CLIENTS) -> RequestLedger:
        """A ledger holding what ``export`` returned; malformed rows raise ``ValueError``."""
        ledger = cls(window, max_clients)
        if not isinstance(rows, list):
            raise ValueError("request identity must be a list")
        for row in rows:
            if not (isinstance(row, list) and len(row) == 4 and isinstance(row[0], str)
                    and all(_count(x) for x in row[1:3]) and isinstance(row[3], list)):
                raise ValueError(f"bad request identity row {row!r:.80}")
            client, watermark, top, keys = row
            state = ledger._client(client)
            state.watermark, state.top = watermark, top
            for entry in keys:
                if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
                        and isinstance(entry[1], list) and all(_count(i) for i in entry[1])):
                    raise ValueError(f"bad request identity entry {entry!r:.80}")
                state.keys[entry[0]] = dict.fromkeys(entry[1], APPLIED)
        return ledger


def _prune(ids: dict[int, int], watermark: int) -> None:
    """Drop applied ids below the watermark (pending ones stay until their round closes)."""
    for stale in [i for i, s in ids.items() if i < watermark and s == APPLIED]:
        del ids[stale]


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
