"""Reading an encoded snapshot: its header parsed and checked, then its arrays viewed.

Used for snapshots a standby reads in chunks and for checkpoint files alike; anything wrong
raises ``SnapshotError`` saying what, never another exception.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from zps.store.errors import BadOptimizer, BadRowSpec
from zps.store.optimizers import make_optimizer
from zps.store.rows import parse_row_spec
from zps.store.rowsnap import RowState, dtypes_of, expected_keys
from zps.store.snapshot import (
    _MAX_ARRAY_BYTES,
    _MAX_NDIM,
    FORMAT_VERSION,
    HEADER_MAGIC,
    Snapshot,
    SnapshotError,
    TableState,
)

# ---------------------------------------------------------------- decoding


@dataclass(frozen=True, slots=True)
class ArrayMeta:
    """One array of an encoded snapshot."""

    dtype: np.dtype
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True, slots=True)
class _TableMeta:
    name: str
    version: int
    optimizer: dict[str, Any] | None
    steps: int
    data: ArrayMeta
    state: tuple[tuple[str, ArrayMeta], ...]


@dataclass(frozen=True, slots=True)
class SnapshotLayout:
    """A parsed snapshot header: what arrays follow it, before any has arrived."""

    seq: int
    epoch: int
    extra: dict[str, Any]
    tables: tuple[_TableMeta, ...]
    rows: tuple[_RowMeta, ...] = ()

    def arrays(self) -> list[ArrayMeta]:
        """Every array the header announces, in buffer order."""
        dense = [m for t in self.tables for m in (t.data, *(a for _, a in t.state))]
        return dense + [m for r in self.rows for _, m in r.arrays]


@dataclass(frozen=True, slots=True)
class _RowMeta:
    name: str
    spec: dict[str, Any]
    share: int
    version: int
    counters: tuple[int, int, int, int]
    arrays: tuple[tuple[str, ArrayMeta], ...]


def _parse_rows(wire: Any, index: int) -> _RowMeta:
    if not isinstance(wire, dict) or not isinstance(wire.get("name"), str):
        raise _fail(f"row table entry {index} must be a map with a name")
    what = f"row table {wire['name']!r}"
    try:
        spec = parse_row_spec(wire.get("spec"))
    except BadRowSpec as exc:
        raise _fail(f"{what}: {exc}") from None
    counters = wire.get("counters")
    if not isinstance(counters, list) or len(counters) != 4:
        raise _fail(f"{what} counters must be [admitted, evicted, pending, counted]")
    entries = wire.get("arrays")
    keys = expected_keys(spec.optimizer.state_keys if spec.optimizer else (),
                         spec.admit_after > 1)
    if not isinstance(entries, list) or [e[0] if isinstance(e, list) and e else None
                                         for e in entries] != keys:
        raise _fail(f"{what} arrays must be {keys}")
    arrays = tuple((e[0], _parse_array(e[1:], f"{what} {e[0]}",
                                       dtypes_of(e[0], spec.dtype))) for e in entries)
    return _RowMeta(wire["name"], spec.to_wire(), _count(wire.get("share"), f"{what} share"),
                    _count(wire.get("version"), f"{what} version"),
                    (_count(counters[0], "admitted"), _count(counters[1], "evicted"),
                     _count(counters[2], "pending"), _count(counters[3], "counted")), arrays)


def _fail(what: str) -> SnapshotError:
    return SnapshotError(f"bad snapshot header: {what}")


def _count(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _fail(f"{what} must be an integer >= 0, got {value!r}")
    return value


def _parse_array(wire: Any, what: str,
                 allowed: tuple[str, ...] = ("float32", "float64")) -> ArrayMeta:
    if not isinstance(wire, list) or len(wire) != 3:
        raise _fail(f"{what} must be [dtype, shape, nbytes], got {wire!r}")
    name, shape, nbytes = wire
    if not isinstance(name, str) or name not in allowed:
        raise _fail(f"{what} dtype must be one of {sorted(allowed)}, got {name!r}")
    if not isinstance(shape, list) or len(shape) > _MAX_NDIM:
        raise _fail(f"{what} shape must be a list of at most {_MAX_NDIM} sizes, got {shape!r}")
    dims = tuple(_count(d, f"{what} shape entry") for d in shape)
    dtype = np.dtype(name).newbyteorder("<")
    if math.prod(max(d, 1) for d in dims) * dtype.itemsize > _MAX_ARRAY_BYTES:
        raise _fail(f"{what} shape {list(dims)} is impossibly large")
    expected = math.prod(dims) * dtype.itemsize
    if _count(nbytes, f"{what} nbytes") != expected:
        raise _fail(f"{what} says {nbytes} bytes but {name} of shape {list(dims)} "
                    f"takes {expected}")
    return ArrayMeta(dtype, dims, expected)


def _parse_table(wire: Any, index: int) -> _TableMeta:
    if not isinstance(wire, dict):
        raise _fail(f"table entry {index} must be a map")
    name = wire.get("name")
    if not isinstance(name, str):
        raise _fail(f"table entry {index} name must be a string, got {name!r}")
    what = f"table {name!r}"
    spec = wire.get("optimizer")
    try:
        make_optimizer(spec)
    except BadOptimizer as exc:
        raise _fail(f"{what} optimizer: {exc}") from None
    data = _parse_array(wire.get("data"), f"{what} data")
    state_wire = wire.get("state")
    if not isinstance(state_wire, list) or (spec is None and state_wire):
        raise _fail(f"{what} state must be a list, empty without an optimizer")
    state: dict[str, ArrayMeta] = {}
    for entry in state_wire:
        if not isinstance(entry, list) or not entry or not isinstance(entry[0], str):
            raise _fail(f"{what} state entries must be [key, dtype, shape, nbytes]")
        key = entry[0]
        meta = _parse_array(entry[1:], f"{what} optimizer state {key!r}")
        if key in state or meta.shape != data.shape:
            raise _fail(f"{what} optimizer state {key!r} is repeated or not shaped like "
                        "the table")
        state[key] = meta
    return _TableMeta(name, _count(wire.get("version"), f"{what} version"), spec,
                      _count(wire.get("steps"), f"{what} steps"), data, tuple(state.items()))


def parse_header(raw: Any) -> SnapshotLayout:
    """The layout an encoded snapshot header describes; ``SnapshotError`` if malformed."""
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises many unrelated types on garbage
        raise _fail(f"not valid msgpack ({type(exc).__name__}: {exc})") from None
    if not isinstance(header, dict) or header.get("magic") != HEADER_MAGIC:
        raise _fail(f"not a zps snapshot header (no magic {HEADER_MAGIC!r})")
    if header.get("format") != FORMAT_VERSION:
        raise _fail(f"format version {header.get('format')!r} is not supported; this zps "
                    f"reads version {FORMAT_VERSION}")
    extra, tables, rows = header.get("extra"), header.get("tables"), header.get("rows", [])
    if not isinstance(extra, dict) or not isinstance(tables, list) or not isinstance(rows, list):
        raise _fail("extra must be a map, tables and rows lists")
    parsed = tuple(_parse_table(t, i) for i, t in enumerate(tables))
    parsed_rows = tuple(_parse_rows(r, i) for i, r in enumerate(rows))
    names = [t.name for t in parsed] + [r.name for r in parsed_rows]
    if len(set(names)) != len(names):
        raise _fail("a table name appears twice")
    return SnapshotLayout(_count(header.get("seq"), "seq"), _count(header.get("epoch"), "epoch"),
                          extra, parsed, parsed_rows)


def assemble(header: SnapshotLayout, buffers: Sequence[Any], writable: bool = False) -> Snapshot:
    """The snapshot, with views of ``buffers`` (one per array of ``header``, each of the
    size it announces), read-only unless ``writable`` (buffers the caller owns)."""
    if len(buffers) != len(header.arrays()):
        raise SnapshotError(f"snapshot header announces {len(header.arrays())} arrays but "
                            f"{len(buffers)} arrived")
    views = iter(_view(buffer, meta, writable)
                 for buffer, meta in zip(buffers, header.arrays(), strict=True))
    tables = tuple(
        TableState(t.name, next(views), t.version, t.optimizer, t.steps,
                   {key: next(views) for key, _ in t.state})
        for t in header.tables)
    rows = tuple(RowState(r.name, r.spec, r.share, r.version, r.counters,
                          {key: next(views) for key, _ in r.arrays})
                 for r in header.rows)
    return Snapshot(header.seq, header.epoch, tables, header.extra, rows)


def _view(buffer: Any, meta: ArrayMeta, writable: bool) -> np.ndarray:
    array = np.frombuffer(buffer, dtype=meta.dtype).reshape(meta.shape)
    if not writable:
        array.flags.writeable = False
    return array


def snapshot_from_frames(frames: Sequence[Any]) -> Snapshot:
    """The snapshot carried by ``frames`` (from ``snapshot_frames``, possibly via ZeroMQ).

    Arrays are read-only views of the frames (no copy). Raises ``SnapshotError`` saying
    what is wrong (format version, header field, dtype, shape against byte count, frame
    count, a frame that is not a contiguous buffer) and nothing else.
    """
    if not frames:
        raise SnapshotError("empty snapshot message: expected a header frame")
    buffers = [_as_bytes(f, i) for i, f in enumerate(frames)]
    header = parse_header(buffers[0])
    metas = header.arrays()
    if len(buffers) - 1 != len(metas):
        raise SnapshotError(f"snapshot header announces {len(metas)} array frames but "
                            f"{len(buffers) - 1} arrived")
    for i, (buffer, meta) in enumerate(zip(buffers[1:], metas, strict=True), start=1):
        if buffer.nbytes != meta.nbytes:
            raise SnapshotError(f"snapshot frame {i} holds {buffer.nbytes} bytes but its "
                                f"header says {meta.nbytes}")
    return assemble(header, buffers[1:])


def _as_bytes(frame: Any, index: int) -> np.ndarray:
    try:
        return np.frombuffer(frame, dtype=np.uint8)
    except (TypeError, ValueError) as exc:
        raise SnapshotError(f"snapshot frame {index} is not a contiguous buffer "
                            f"({exc})") from None


