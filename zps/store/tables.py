"""NumPy-backed parameter tables with versions, and the store that numbers every change.

Every change the store applies gets the next sequence number and is appended to a bounded
change log; subscribers (replication, later) see each change in order. Server state is
therefore a snapshot plus an ordered log, which is what replication and checkpoints rest on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from zps.codecs import Compressed, add_scaled
from zps.errors import ProtocolError
from zps.store.optimizers import Optimizer


class Reader(Protocol):
    """Something still reading a table's buffer (a zero-copy send in flight)."""

    @property
    def done(self) -> bool: ...


class Table:
    """One dense tensor plus its version (the number of changes applied to it).

    Replies send the table's buffer zero-copy. While such a send may still be reading it,
    an update must not write in place: ``apply`` then writes a new array instead
    (copy-on-write), so a reply never carries a half-updated tensor.
    """

    __slots__ = ("_readers", "copies", "data", "name", "optimizer", "version")

    def __init__(self, name: str, data: np.ndarray, optimizer: Optimizer | None = None) -> None:
        self.name = name
        self.data = data
        self.version = 0
        self.optimizer = optimizer  # pushes are gradients and the server takes the step
        self.copies = 0  # updates that had to copy because a send still read the buffer
        self._readers: list[Reader] = []

    def pin(self, reader: Reader) -> None:
        """Keep the current buffer unchanged until ``reader.done`` turns true."""
        self._readers = [r for r in self._readers if not r.done]
        self._readers.append(reader)

    def apply(self, update: np.ndarray | Compressed, scale: float = 1.0) -> None:
        """``data += scale * update`` (in place unless a reader still holds the buffer).

        A compressed update is decoded block by block straight into the table.
        """
        busy = any(not r.done for r in self._readers)
        self._readers.clear()
        if busy:
            self.copies += 1
            self.data = self.data.copy()
        add_scaled(self.data, update, scale)
        self.version += 1


Requests = tuple[tuple[str, int], ...]  # (client id, request id) of the pushes in a change


@dataclass(frozen=True, slots=True)
class Change:
    """One numbered change: a table created, or ``table += scale * update`` applied.

    ``given`` and ``given_scale`` are what ``Store.apply`` was called with (for a table with
    a server-side optimizer, the gradient; ``update`` is then the optimizer's step), so a
    replica that applies ``given`` to the same state computes the same bits. ``requests``
    are the pushes the change carries, for deduplication on a replica.
    """

    seq: int
    table: str
    version: int
    update: np.ndarray | Compressed
    scale: float
    given: np.ndarray | Compressed
    given_scale: float
    requests: Requests = ()
    kind: str = "apply"  # or "create": update is the initial value
    optimizer: dict[str, Any] | None = None  # create: the table's optimizer settings


class Store:
    """All tables of one server, a sequence number and a bounded log of applied changes."""

    def __init__(self, log_entries: int = 1024, log_bytes: int = 256 << 20) -> None:
        self._tables: dict[str, Table] = {}
        self.seq = 0
        self._log: deque[Change] = deque()
        self._log_entries = log_entries
        self._log_bytes = log_bytes
        self._logged_bytes = 0
        self._subscribers: list[Callable[[Change], None]] = []

    def __contains__(self, name: str) -> bool:
        return name in self._tables

    def __iter__(self) -> Iterator[Table]:
        return iter(self._tables.values())

    def __len__(self) -> int:
        return len(self._tables)

    def get(self, name: str) -> Table:
        """The table called ``name``; ``ProtocolError('unknown_table')`` if there is none."""
        try:
            return self._tables[name]
        except KeyError:
            raise ProtocolError(
                "unknown_table",
                f"no table {name!r} on this server; call init() with it first "
                "(if the server restarted, its tables were lost)",
            ) from None

    def create(self, name: str, initial: np.ndarray, optimizer: Optimizer | None = None) -> Table:
        """Create table ``name`` holding a private copy of ``initial`` (a numbered change,
        not kept in the log: its value is the table's until the first apply)."""
        table = Table(name, np.array(initial, copy=True, order="C"), optimizer)
        self._tables[name] = table
        self.seq += 1
        if self._subscribers:
            first = table.data.copy()  # the table changes in place; subscribers may keep this
            change = Change(self.seq, name, 0, first, 0.0, first, 0.0, (), "create",
                            optimizer.spec() if optimizer else None)
            for notify in self._subscribers:
                notify(change)
        return table

    def apply(self, name: str, update: np.ndarray | Compressed, scale: float = 1.0,
              requests: Requests = ()) -> Change:
        """Apply ``table += scale * update``, number it, log it and tell subscribers.

        For a table with a server-side optimizer, ``scale * update`` is a gradient and the
        optimizer's step is what gets added (and logged).
        """
        table = self.get(name)
        given, given_scale = update, scale
        if table.optimizer is not None:
            dense = update.dense() if isinstance(update, Compressed) else update
            grad = dense if scale == 1.0 else np.multiply(dense, scale, dtype=dense.dtype)
            update, scale = table.optimizer.direction(grad), 1.0
        table.apply(update, scale)
        self.seq += 1
        change = Change(self.seq, name, table.version, update, scale, given, given_scale,
                        requests)
        self._append(change)
        for notify in self._subscribers:
            notify(change)
        return change

    def subscribe(self, callback: Callable[[Change], None]) -> Callable[[], None]:
        """Call ``callback(change)`` after every applied change; returns an unsubscribe."""
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
