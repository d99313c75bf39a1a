"""The store: all tables of a server, the sequence number and the bounded change log.

Every change the store applies gets the next sequence number and is appended to a bounded
change log; subscribers (the replication publisher) see each change in order. Server state
is therefore a snapshot plus an ordered log, which is what replication and checkpoints
rest on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from zps.protocol import ClientRequest
from zps.store.errors import TableMismatch, UnknownTable
from zps.store.optimizers import Optimizer
from zps.store.rows import RowSpec, RowTable
from zps.store.tables import DenseTable, Update, table_array

Requests = tuple[ClientRequest, ...]  # (client, request id, watermark) of a change's pushes


@dataclass(frozen=True, slots=True)
class RowPayload:
    """What ``Store.apply_rows`` was given: distinct ids, their updates (gradients for a row
    optimizer) and the time of the push; for an eviction, the ids alone."""

    ids: np.ndarray
    updates: np.ndarray
    now: float = 0.0

    @property
    def nbytes(self) -> int:
        return int(self.ids.nbytes + self.updates.nbytes)


@dataclass(frozen=True, slots=True)
class Change:
    """One numbered change: a table created, or ``table += scale * update`` applied.

    ``given`` and ``given_scale`` are what ``Store.apply`` was called with (for a table with
    a server-side optimizer, the gradient; ``update`` is then the optimizer's step), so a
    replica that applies ``given`` to the same state computes the same bits. ``requests``
    are the pushes the change carries, for the replica's request identity.
    """

    seq: int
    table: str
    version: int
    update: Update | RowPayload
    scale: float
    given: Update | RowPayload
    given_scale: float
    requests: Requests = ()
    kind: str = "apply"  # "create" (update: the initial value); for row tables "create_rows"
    # (meta: the spec), "rows" (given: ids and updates) and "evict" (given: the ids)
    optimizer: dict[str, Any] | None = None  # create: the table's optimizer settings
    meta: dict[str, Any] | None = None  # create_rows: the row table's settings


class Store:
    """All tables of one server, a sequence number and a bounded log of applied changes."""

    def __init__(self, log_entries: int = 1024, log_bytes: int = 256 << 20) -> None:
        self._tables: dict[str, DenseTable | RowTable] = {}
        self.seq = 0
        self._log: deque[Change] = deque()
        self._log_entries = log_entries
        self._log_bytes = log_bytes
        self._logged_bytes = 0
        self._subscribers: list[Callable[[Change], None]] = []

    def __contains__(self, name: str) -> bool:
        return name in self._tables

    def __iter__(self) -> Iterator[DenseTable]:
        """The dense tables."""
        return (t for t in self._tables.values() if isinstance(t, DenseTable))

    def __len__(self) -> int:
        return len(self._tables)

    def row_tables(self) -> Iterator[RowTable]:
        return (t for t in self._tables.values() if isinstance(t, RowTable))

    def tables(self) -> list[DenseTable | RowTable]:
        """Every table, dense and row, in creation order."""
        return list(self._tables.values())

    def table(self, name: str) -> DenseTable | RowTable:
        """The table called ``name``, of either kind; ``UnknownTable`` if there is none."""
        try:
            return self._tables[name]
        except KeyError:
            raise UnknownTable(
                f"no table {name!r} on this server; call init() (or init_rows()) with it "
                "first (if the server restarted without a checkpoint, its tables were lost)"
            ) from None

    def get(self, name: str) -> DenseTable:
        """The dense table called ``name``; ``UnknownTable``, or ``TableMismatch`` for a row
        table."""
        table = self.table(name)
        if not isinstance(table, DenseTable):
            raise TableMismatch(f"{name!r} is a row table: use pull_rows / push_rows")
        return table

    def rows(self, name: str) -> RowTable:
        """The row table called ``name``; ``UnknownTable``, or ``TableMismatch`` for a dense
        table."""
        table = self.table(name)
        if not isinstance(table, RowTable):
            raise TableMismatch(f"{name!r} is a dense table: use pull / push")
        return table

    def create(self, name: str, initial: np.ndarray, optimizer: Optimizer | None = None,
               adopt: bool = False) -> DenseTable:
        """Create table ``name`` holding a private copy of ``initial`` (``adopt``: the
        array itself, which the caller gives up). A numbered change, not kept in the log:
        its value is the table's until the first apply."""
        table = DenseTable(name, initial if adopt else table_array(initial), optimizer)
        self._tables[name] = table
        self.seq += 1
        if self._subscribers:
            first = table.data.copy()  # the table changes in place; subscribers may keep this
            change = Change(self.seq, name, 0, first, 0.0, first, 0.0, (), "create",
                            optimizer.spec() if optimizer else None)
            for notify in self._subscribers:
                notify(change)
        return table

    def apply(self, name: str, update: Update, scale: float = 1.0,
              requests: Requests = ()) -> Change:
        """Apply ``table += scale * update``, number it, log it and tell subscribers.

        For a table with a server-side optimizer, ``scale * update`` is a gradient and the
        optimizer's step is what gets added (and logged).
        """
        table = self.get(name)
        applied, applied_scale = table.apply(update, scale)
        self.seq += 1
        change = Change(self.seq, name, table.version, applied, applied_scale, update, scale,
                        requests)
        self._append(change)
        for notify in self._subscribers:
            notify(change)
        return change

    def put(self, table: RowTable) -> None:
        """Add a row table as it is (a restore: no numbered change)."""
        self._tables[table.name] = table

    def create_rows(self, name: str, spec: RowSpec, share: int = 1) -> RowTable:
        """Create row table ``name`` (a numbered change; ``share``: how many servers hold
        a shard of it, for its ``max_rows``)."""
        table = RowTable(name, spec, share)
        self._tables[name] = table
        self.seq += 1
        empty = RowPayload(np.zeros(0, np.int64), np.zeros((0, spec.dim), table.dtype))
        self._notify(Change(self.seq, name, 0, empty, 0.0, empty, 0.0, (), "create_rows",
                            meta={**spec.to_wire(), "share": share}))
        return table

    def apply_rows(self, name: str, ids: np.ndarray, updates: np.ndarray, scale: float,
                   requests: Requests, now: float, more: bool = False) -> Change:
        """Apply ``scale * updates`` to the rows of ``ids`` (distinct); numbered, and told
        to subscribers (row changes are not kept in the log: delta pulls are dense).
        ``more``: the change is a piece of a larger one, others follow."""
        table = self.rows(name)
        table.apply(ids, updates, scale, now)
        self.seq += 1
        given = RowPayload(ids, updates, now)
        change = Change(self.seq, name, table.version, given, 1.0, given, scale, requests,
                        "rows", meta={"more": True} if more else None)
        self._notify(change)
        return change

    def evict_rows(self, name: str, ids: np.ndarray) -> Change:
        """Remove the rows of ``ids`` (a numbered change, so a standby does the same)."""
        table = self.rows(name)
        table.remove(ids)
        table.version += 1
        self.seq += 1
        payload = RowPayload(ids, np.zeros((0, table.spec.dim), table.dtype))
        change = Change(self.seq, name, table.version, payload, 1.0, payload, 1.0, (), "evict")
        self._notify(change)
        return change

    def _notify(self, change: Change) -> None:
        for notify in self._subscribers:
            notify(change)

    def subscribe(self, callback: Callable[[Change], None]) -> Callable[[], None]:
        """Call ``callback(change)`` after every change; returns an unsubscribe."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    def table_changes(self, name: str, since: int) -> list[Change] | None:
        """The logged changes of table ``name`` after its version ``since``, oldest first;
        None when the log no longer reaches back that far (or ``since`` is not a version
        this table had)."""
        version = self.get(name).version
        if not 0 <= since <= version:
            return None
        wanted = version - since
        found: list[Change] = []
        for change in reversed(self._log):
            if len(found) == wanted:
                break
            if change.table == name:
                found.append(change)
        if len(found) != wanted:
            return None
        found.reverse()
        return found

    def _append(self, change: Change) -> None:
        self._log.append(change)
        self._logged_bytes += change.update.nbytes
        while self._log and (
            len(self._log) > self._log_entries or self._logged_bytes > self._log_bytes
        ):
            self._logged_bytes -= self._log.popleft().update.nbytes
