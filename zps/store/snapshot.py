"""Consistent snapshots of a store, and their encoding as a header plus raw arrays.

A snapshot is the store at one sequence number: every table's bits and version, its
optimizer's settings, step count and state, plus the server's epoch and a msgpack-able
``extra`` map (consistency rounds, request identity, cluster layout). Its encoding is a
msgpack header describing every array (dtype, shape, byte count) in order, and the arrays
as raw buffers; a standby receives them a bounded chunk at a time, a checkpoint file
(``zps.store.checkpoint``) holds them between magic bytes and a checksum.

``take_snapshot`` copies every array (a snapshot to keep); ``freeze_snapshot`` copies
nothing: it pins the tables' buffers and optimizer state, so later updates write elsewhere,
until the caller releases the hold. Decoding validates everything before building a
snapshot and raises ``SnapshotError`` for anything wrong, never another exception. No pickle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from zps.errors import ZpsError
from zps.store.errors import BadOptimizer, BadRowSpec
from zps.store.optimizers import make_optimizer
from zps.store.rowsnap import RowState, restore_rows, row_state
from zps.store.store import Store
from zps.store.tables import DenseTable, Reader

FORMAT_VERSION = 2
HEADER_MAGIC = "zps-snapshot"  # in the msgpack header of transfers and files alike

_DTYPES: dict[str, np.dtype] = {"float32": np.dtype("<f4"), "float64": np.dtype("<f8")}
_MAX_NDIM = 32
_MAX_ARRAY_BYTES = 1 << 48  # far above any real table, far below numpy's overflow checks


class SnapshotError(ZpsError):
    """A snapshot or checkpoint is malformed, corrupted or cannot be represented."""


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@dataclass(frozen=True, slots=True, eq=False)
class TableState:
    """One table in a snapshot. Equality compares array bits, not values (NaN == NaN)."""

    name: str
    data: np.ndarray
    version: int
    optimizer: dict[str, Any] | None  # Optimizer.spec(), or None
    optimizer_steps: int
    optimizer_state: dict[str, np.ndarray]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TableState):
            return NotImplemented
        mine, theirs = self.optimizer_state, other.optimizer_state
        return (
            (self.name, self.version, self.optimizer, self.optimizer_steps)
            == (other.name, other.version, other.optimizer, other.optimizer_steps)
            and _same_bits(self.data, other.data)
            and mine.keys() == theirs.keys()
            and all(_same_bits(mine[k], theirs[k]) for k in mine)
        )

    __hash__ = None  # type: ignore[assignment]  # holds arrays


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The store at sequence number ``seq`` in server epoch ``epoch``, plus ``extra`` state."""

    seq: int
    epoch: int
    tables: tuple[TableState, ...]
    extra: dict[str, Any]
    rows: tuple[RowState, ...] = ()  # row tables (copied: their rows, compacted)


# ---------------------------------------------------------------- store <-> snapshot


def take_snapshot(store: Store, epoch: int, extra: dict[str, Any]) -> Snapshot:
    """A snapshot of ``store`` now: private, read-only copies of every array.

    Call it between changes (on the server's loop, with no ``await`` in between) so that
    ``seq`` and the tables agree. ``extra`` is copied through msgpack, so tuples come back
    as lists. Raises ``SnapshotError`` if ``extra`` is not msgpack-able or a table's dtype
    is not float32/float64, and ``ValueError`` if ``epoch`` is negative.
    """
    return _snapshot(store, epoch, extra, [_copied(t) for t in store])


def _row_states(store: Store) -> tuple[RowState, ...]:
    return tuple(row_state(t) for t in store.row_tables())


def freeze_snapshot(store: Store, epoch: int, extra: dict[str, Any],
                    hold: Reader) -> Snapshot:
    """A snapshot of ``store`` now that copies no dense array: those are the tables' own
    buffers and optimizer state, which later updates leave alone (writing elsewhere) until
    ``hold.done``. Row tables are compacted into new arrays (stored rows in id order), a
    copy made here, on the caller's thread. Use it only while the hold lasts. Raises as
    ``take_snapshot``."""
    states = []
    for table in store:
        table.pin(hold)
        table.freeze_state(hold)
        states.append(_frozen(table))
    return _snapshot(store, epoch, extra, states)


def _snapshot(store: Store, epoch: int, extra: dict[str, Any],
              tables: list[TableState]) -> Snapshot:
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    try:
        extra = msgpack.unpackb(msgpack.packb(extra), raw=False, strict_map_key=False)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SnapshotError(f"extra state cannot be encoded with msgpack ({exc})") from None
    return Snapshot(store.seq, epoch, tuple(tables), extra, _row_states(store))


def _frozen(table: DenseTable) -> TableState:
    optimizer = table.optimizer
    state = dict(optimizer.state) if optimizer else {}
    _checked_arrays(table.name, table.data, state)
    return TableState(table.name, table.data, table.version,
                      optimizer.spec() if optimizer else None,
                      optimizer.steps if optimizer else 0, state)


def _copied(table: DenseTable) -> TableState:
    frozen = _frozen(table)
    return TableState(frozen.name, _frozen_copy(frozen.data), frozen.version,
                      frozen.optimizer, frozen.optimizer_steps,
                      {k: _frozen_copy(v) for k, v in frozen.optimizer_state.items()})


def _checked_arrays(name: str, data: np.ndarray,
                    state: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """``[("data", data), *state.items()]``; ``SnapshotError`` if one is not float32/64."""
    named = [("data", data), *state.items()]
    for key, array in named:
        if not isinstance(array, np.ndarray) or array.dtype.name not in _DTYPES:
            got = getattr(array, "dtype", type(array).__name__)
            raise SnapshotError(f"table {name!r} {key} is not a float32 or float64 array "
                                f"(got {got}); snapshots hold no other kind")
    return named


def _frozen_copy(array: np.ndarray) -> np.ndarray:
    copy = np.array(array, copy=True, order="C")
    copy.flags.writeable = False
    return copy


def restore_store(snapshot: Snapshot, log_entries: int = 1024,
                  log_bytes: int = 256 << 20, adopt: bool = False) -> Store:
    """A new ``Store`` equal to ``snapshot``: same bits, versions, ``seq`` and optimizers
    (settings, steps and state), with an empty change log (so ``table_changes`` from an
    older version says the log does not reach back). The store gets writable copies of
    every array; with ``adopt`` it takes the snapshot's own arrays where they are
    writable (the snapshot must not be used afterwards).

    Raises ``SnapshotError`` if a table's optimizer settings are invalid.
    """
    store = Store(log_entries, log_bytes)
    for state in snapshot.tables:
        try:
            optimizer = make_optimizer(state.optimizer)
        except BadOptimizer as exc:
            raise SnapshotError(f"table {state.name!r}: {exc}") from None
        if optimizer is not None:
            optimizer.steps = state.optimizer_steps
            optimizer.state = {k: _owned(v, adopt) for k, v in state.optimizer_state.items()}
        table = store.create(state.name, _owned(state.data, adopt), optimizer, adopt=True)
        table.version = state.version
    for rows in snapshot.rows:
        try:
            store.put(restore_rows(rows))
        except BadRowSpec as exc:
            raise SnapshotError(str(exc)) from None
    store.seq = snapshot.seq
    return store


def _owned(array: np.ndarray, adopt: bool) -> np.ndarray:
    if adopt and array.flags.writeable and array.flags.c_contiguous:
        return array
    return np.array(array, copy=True, order="C")


# ---------------------------------------------------------------- encoding


def _wire_array(array: np.ndarray) -> np.ndarray:
    """``array`` as little-endian and C-contiguous; the same object when it already is."""
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array if array.flags.c_contiguous else array.copy(order="C")


def _array_to_wire(array: np.ndarray) -> list[Any]:
    return [array.dtype.name, list(array.shape), array.nbytes]


def encode_snapshot(snapshot: Snapshot) -> tuple[bytes, list[np.ndarray]]:
    """The msgpack header and the arrays it describes, in order (not copied). Raises
    ``SnapshotError`` if an array is not float32/float64 or ``extra`` is not msgpack-able."""
    tables: list[dict[str, Any]] = []
    arrays: list[np.ndarray] = []
    for t in snapshot.tables:
        named = _checked_arrays(t.name, t.data, t.optimizer_state)
        arrays.extend(_wire_array(a) for _, a in named)
        tables.append({
            "name": t.name, "version": t.version, "optimizer": t.optimizer,
            "steps": t.optimizer_steps, "data": _array_to_wire(t.data),
            "state": [[k, *_array_to_wire(a)] for k, a in t.optimizer_state.items()],
        })
    rows: list[dict[str, Any]] = []
    for r in snapshot.rows:
        arrays.extend(_wire_array(a) for a in r.arrays.values())
        rows.append({"name": r.name, "spec": r.spec, "share": r.share, "version": r.version,
                     "counters": list(r.counters),
                     "arrays": [[k, *_array_to_wire(a)] for k, a in r.arrays.items()]})
    header = {"magic": HEADER_MAGIC, "format": FORMAT_VERSION, "seq": snapshot.seq,
              "epoch": snapshot.epoch, "extra": snapshot.extra, "tables": tables,
              "rows": rows}
    try:
        return msgpack.packb(header), arrays
    except (TypeError, ValueError, OverflowError) as exc:
        raise SnapshotError(f"snapshot header cannot be encoded with msgpack ({exc})") from None


def snapshot_frames(snapshot: Snapshot) -> list[bytes | np.ndarray]:
    """Frames for sending ``snapshot``: the msgpack header, then every array's buffer
    (each table's data, then its optimizer state), zero-copy and C-contiguous.

    Raises ``SnapshotError`` if an array is not float32/float64 or ``extra`` is not
    msgpack-able.
    """
    header, arrays = encode_snapshot(snapshot)
    return [header, *arrays]


# Reading lives in snapshot_read (it needs the types above); its names are here too.
from zps.store.snapshot_read import (  # noqa: E402
    ArrayMeta,
    SnapshotLayout,
    assemble,
    parse_header,
    snapshot_from_frames,
)

__all__ = ["ArrayMeta", "Snapshot", "SnapshotError", "SnapshotLayout", "TableState",
           "assemble", "encode_snapshot", "freeze_snapshot", "parse_header",
           "restore_store", "snapshot_frames", "snapshot_from_frames", "take_snapshot"]
