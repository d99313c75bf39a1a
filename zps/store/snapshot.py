"""Consistent snapshots of a store, as ZeroMQ frames (standby catch-up) or checkpoint files.

A snapshot is the store at one sequence number: every table's bits and version, its
optimizer's settings, step count and state, plus the server's epoch and a msgpack-able
``extra`` map (consistency rounds, dedup windows). Frame 0 is a msgpack header describing
every array (dtype, shape, byte count) in order; the arrays follow as raw buffers. A
checkpoint file holds the same header and buffers between magic bytes and a checksum:

    MAGIC | header length (u64 LE) | header | pad to 64 | array, pad to 64 ... | blake2b-256

Arrays are little-endian and each starts 64-byte aligned, so reading a file takes one read
and then only ``np.frombuffer`` views. Decoding validates everything before building a
snapshot and raises ``SnapshotError`` for anything wrong, never another exception. No pickle.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
import numpy as np

from zps.errors import ProtocolError, ZpsError
from zps.store.optimizers import make_optimizer
from zps.store.tables import Store, Table

FORMAT_VERSION = 1
HEADER_MAGIC = "zps-snapshot"  # in the msgpack header of frames and files alike
FILE_MAGIC = b"ZPSCKPT\x00"

_DTYPES: dict[str, np.dtype] = {"float32": np.dtype("<f4"), "float64": np.dtype("<f8")}
_MAX_NDIM = 32
_MAX_ARRAY_BYTES = 1 << 48  # far above any real table, far below numpy's overflow checks
_ALIGN = 64
_PREFIX = struct.Struct("<Q")  # header length, after FILE_MAGIC
_DIGEST_BYTES = 32
_CHECKPOINT_NAME = re.compile(r"ckpt-(\d+)-(\d+)\.zps")
_TEMP_PREFIX, _TEMP_SUFFIX = ".ckpt-", ".tmp"


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


# ---------------------------------------------------------------- store <-> snapshot


def take_snapshot(store: Store, epoch: int, extra: dict[str, Any]) -> Snapshot:
    """A snapshot of ``store`` now: private, read-only copies of every array.

    Call it between changes (on the server's loop, with no ``await`` in between) so that
    ``seq`` and the tables agree. ``extra`` is copied through msgpack, so tuples come back
    as lists. Raises ``SnapshotError`` if ``extra`` is not msgpack-able or a table's dtype
    is not float32/float64, and ``ValueError`` if ``epoch`` is negative.
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    try:
        extra = msgpack.unpackb(msgpack.packb(extra), raw=False, strict_map_key=False)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SnapshotError(f"extra state cannot be encoded with msgpack ({exc})") from None
    tables = tuple(_table_state(table) for table in store)
    return Snapshot(store.seq, epoch, tables, extra)


def _table_state(table: Table) -> TableState:
    optimizer = table.optimizer
    state = optimizer.state if optimizer else {}
    _checked_arrays(table.name, table.data, state)
    return TableState(table.name, _frozen_copy(table.data), table.version,
                      optimizer.spec() if optimizer else None,
                      optimizer.steps if optimizer else 0,
                      {k: _frozen_copy(v) for k, v in state.items()})


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
                  log_bytes: int = 256 << 20) -> Store:
    """A new ``Store`` equal to ``snapshot``: same bits, versions, ``seq`` and optimizers
    (settings, steps and state), with writable copies of every array and an empty change
    log (so ``table_changes`` from an older version says the log does not reach back).

    Raises ``SnapshotError`` if a table's optimizer settings are invalid.
    """
    store = Store(log_entries, log_bytes)
    for state in snapshot.tables:
        try:
            optimizer = make_optimizer(state.optimizer)
        except ProtocolError as exc:
            raise SnapshotError(f"table {state.name!r}: {exc}") from None
        if optimizer is not None:
            optimizer.steps = state.optimizer_steps
            optimizer.state = {k: np.array(v, copy=True, order="C")
                               for k, v in state.optimizer_state.items()}
        table = store.create(state.name, state.data, optimizer)  # create copies the data
        table.version = state.version
    store.seq = snapshot.seq
    return store


# ---------------------------------------------------------------- encoding


def _wire_array(array: np.ndarray) -> np.ndarray:
    """``array`` as little-endian and C-contiguous; the same object when it already is."""
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array if array.flags.c_contiguous else array.copy(order="C")


def _array_to_wire(array: np.ndarray) -> list[Any]:
    return [array.dtype.name, list(array.shape), array.nbytes]


def _encode(snapshot: Snapshot) -> tuple[bytes, list[np.ndarray]]:
    """The msgpack header and the arrays it describes, in order (not copied)."""
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
    header = {"magic": HEADER_MAGIC, "format": FORMAT_VERSION, "seq": snapshot.seq,
              "epoch": snapshot.epoch, "extra": snapshot.extra, "tables": tables}
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
    header, arrays = _encode(snapshot)
    return [header, *arrays]


# ---------------------------------------------------------------- decoding


@dataclass(frozen=True, slots=True)
class _ArrayMeta:
    dtype: np.dtype
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True, slots=True)
class _TableMeta:
    name: str
    version: int
    optimizer: dict[str, Any] | None
    steps: int
    data: _ArrayMeta
    state: tuple[tuple[str, _ArrayMeta], ...]


@dataclass(frozen=True, slots=True)
class _Header:
    seq: int
    epoch: int
    extra: dict[str, Any]
    tables: tuple[_TableMeta, ...]

    def arrays(self) -> list[_ArrayMeta]:
        """Every array the header announces, in buffer order."""
        return [m for t in self.tables for m in (t.data, *(a for _, a in t.state))]


def _fail(what: str) -> SnapshotError:
    return SnapshotError(f"bad snapshot header: {what}")


def _count(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _fail(f"{what} must be an integer >= 0, got {value!r}")
    return value


def _parse_array(wire: Any, what: str) -> _ArrayMeta:
    if not isinstance(wire, list) or len(wire) != 3:
        raise _fail(f"{what} must be [dtype, shape, nbytes], got {wire!r}")
    name, shape, nbytes = wire
    if not isinstance(name, str) or name not in _DTYPES:
        raise _fail(f"{what} dtype must be one of {sorted(_DTYPES)}, got {name!r}")
    if not isinstance(shape, list) or len(shape) > _MAX_NDIM:
        raise _fail(f"{what} shape must be a list of at most {_MAX_NDIM} sizes, got {shape!r}")
    dims = tuple(_count(d, f"{what} shape entry") for d in shape)
    dtype = _DTYPES[name]
    if math.prod(max(d, 1) for d in dims) * dtype.itemsize > _MAX_ARRAY_BYTES:
        raise _fail(f"{what} shape {list(dims)} is impossibly large")
    expected = math.prod(dims) * dtype.itemsize
    if _count(nbytes, f"{what} nbytes") != expected:
        raise _fail(f"{what} says {nbytes} bytes but {name} of shape {list(dims)} "
                    f"takes {expected}")
    return _ArrayMeta(dtype, dims, expected)


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
    except ProtocolError as exc:
        raise _fail(f"{what} optimizer: {exc}") from None
    data = _parse_array(wire.get("data"), f"{what} data")
    state_wire = wire.get("state")
    if not isinstance(state_wire, list) or (spec is None and state_wire):
        raise _fail(f"{what} state must be a list, empty without an optimizer")
    state: dict[str, _ArrayMeta] = {}
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


def _parse_header(raw: Any) -> _Header:
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises many unrelated types on garbage
        raise _fail(f"not valid msgpack ({type(exc).__name__}: {exc})") from None
    if not isinstance(header, dict) or header.get("magic") != HEADER_MAGIC:
        raise _fail(f"not a zps snapshot header (no magic {HEADER_MAGIC!r})")
    if header.get("format") != FORMAT_VERSION:
        raise _fail(f"format version {header.get('format')!r} is not supported; this zps "
                    f"reads version {FORMAT_VERSION}")
    extra, tables = header.get("extra"), header.get("tables")
    if not isinstance(extra, dict) or not isinstance(tables, list):
        raise _fail("extra must be a map and tables a list")
    parsed = tuple(_parse_table(t, i) for i, t in enumerate(tables))
    if len({t.name for t in parsed}) != len(parsed):
        raise _fail("a table name appears twice")
    return _Header(_count(header.get("seq"), "seq"), _count(header.get("epoch"), "epoch"),
                   extra, parsed)


def _assemble(header: _Header, buffers: Sequence[Any]) -> Snapshot:
    """The snapshot, with read-only views of ``buffers`` (already counted and sized)."""
    views = iter(
        _view(buffer, meta) for buffer, meta in zip(buffers, header.arrays(), strict=True))
    tables = tuple(
        TableState(t.name, next(views), t.version, t.optimizer, t.steps,
                   {key: next(views) for key, _ in t.state})
        for t in header.tables)
    return Snapshot(header.seq, header.epoch, tables, header.extra)


def _view(buffer: Any, meta: _ArrayMeta) -> np.ndarray:
    array = np.frombuffer(buffer, dtype=meta.dtype).reshape(meta.shape)
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
    header = _parse_header(buffers[0])
    metas = header.arrays()
    if len(buffers) - 1 != len(metas):
        raise SnapshotError(f"snapshot header announces {len(metas)} array frames but "
                            f"{len(buffers) - 1} arrived")
    for i, (buffer, meta) in enumerate(zip(buffers[1:], metas, strict=True), start=1):
        if buffer.nbytes != meta.nbytes:
            raise SnapshotError(f"snapshot frame {i} holds {buffer.nbytes} bytes but its "
                                f"header says {meta.nbytes}")
    return _assemble(header, buffers[1:])


def _as_bytes(frame: Any, index: int) -> np.ndarray:
    try:
        return np.frombuffer(frame, dtype=np.uint8)
    except (TypeError, ValueError) as exc:
        raise SnapshotError(f"snapshot frame {index} is not a contiguous buffer "
                            f"({exc})") from None


# ---------------------------------------------------------------- checkpoint files


def _padding(offset: int) -> int:
    return -offset % _ALIGN


def checkpoint_name(snapshot: Snapshot) -> str:
    """The file name of ``snapshot``'s checkpoint; names sort by (epoch, seq)."""
    return f"ckpt-{snapshot.epoch:08d}-{snapshot.seq:016d}.zps"


def _checkpoint_key(path: Path) -> tuple[int, int] | None:
    match = _CHECKPOINT_NAME.fullmatch(path.name)
    return (int(match[1]), int(match[2])) if match else None


def _checkpoints(directory: Path) -> list[Path]:
    """The checkpoint files in ``directory``, oldest first (temp files excluded)."""
    found = [(key, p) for p in directory.iterdir() if (key := _checkpoint_key(p))]
    return [p for _, p in sorted(found)]


def _write_parts(file: BinaryIO, parts: Sequence[Any]) -> None:
    digest = hashlib.blake2b(digest_size=_DIGEST_BYTES)
    for part in parts:
        view = memoryview(part)  # arrays are written from their own memory, not copied
        digest.update(view)
        file.write(view)
    file.write(digest.digest())


def write_checkpoint(directory: Path, snapshot: Snapshot, keep: int = 3) -> Path:
    """Write ``snapshot`` to ``directory`` atomically and return the checkpoint's path.

    The file is written under a temporary name, flushed and fsynced, renamed into place and
    the directory fsynced, so a crash leaves either the old set of checkpoints or the new
    one. Then all but the newest ``keep`` checkpoints, and temp files left by interrupted
    writes, are deleted (a checkpoint directory belongs to one server). Creates
    ``directory`` if needed. Raises ``SnapshotError`` if the snapshot cannot be encoded
    (nothing is written), ``OSError`` if the disk refuses (the temp file is removed), and
    ``ValueError`` if ``keep < 1``.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    header, arrays = _encode(snapshot)
    parts: list[Any] = [FILE_MAGIC, _PREFIX.pack(len(header)), header]
    offset = len(FILE_MAGIC) + _PREFIX.size + len(header)
    for array in arrays:
        parts.append(bytes(_padding(offset)))
        offset += _padding(offset)
        parts.append(array)
        offset += array.nbytes
    directory.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb") as file:
            _write_parts(file, parts)
            file.flush()
            os.fsync(file.fileno())
        path = directory / checkpoint_name(snapshot)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    _fsync_directory(directory)
    _prune(directory, keep, keep_path=path)
    return path


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable (POSIX; platforms that cannot open directories skip it)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prune(directory: Path, keep: int, keep_path: Path) -> None:
    for old in _checkpoints(directory)[:-keep]:
        if old != keep_path:  # never the one just written, even if older by name
            old.unlink(missing_ok=True)
    for temp in directory.glob(f"{_TEMP_PREFIX}*{_TEMP_SUFFIX}"):
        temp.unlink(missing_ok=True)


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest checkpoint in ``directory`` by name (highest epoch, then seq), or None
    when there is none or the directory does not exist. Temp files are ignored."""
    if not directory.is_dir():
        return None
    found = _checkpoints(directory)
    return found[-1] if found else None


def read_checkpoint(path: Path) -> Snapshot:
    """The snapshot stored in checkpoint file ``path``, read with one read.

    Arrays are read-only, 64-byte aligned views of that one buffer. Raises
    ``SnapshotError`` naming the file and the problem: unreadable, bad magic, truncated,
    checksum mismatch, bad header or sizes.
    """
    try:
        buffer = _read_all(path)
    except OSError as exc:
        raise SnapshotError(f"cannot read checkpoint {path}: {exc}") from None
    try:
        return _decode_file(buffer)
    except SnapshotError as exc:
        raise SnapshotError(f"checkpoint {path}: {exc}") from None


def _read_all(path: Path) -> np.ndarray:
    with path.open("rb", buffering=0) as file:
        size = os.fstat(file.fileno()).st_size
        raw = np.empty(size + _ALIGN, dtype=np.uint8)
        shift = -raw.ctypes.data % _ALIGN  # so arrays, 64-byte aligned in the file, are here
        buffer = raw[shift: shift + size]
        view, done = buffer.data, 0
        while done < size and (n := file.readinto(view[done:])):
            done += n
    return buffer[:done]


def _decode_file(buffer: np.ndarray) -> Snapshot:
    start = len(FILE_MAGIC) + _PREFIX.size
    if buffer.nbytes < start + _DIGEST_BYTES:
        raise SnapshotError(f"truncated: only {buffer.nbytes} bytes")
    if buffer[: len(FILE_MAGIC)].tobytes() != FILE_MAGIC:
        raise SnapshotError("bad magic: not a zps checkpoint file")
    (header_bytes,) = _PREFIX.unpack(buffer[len(FILE_MAGIC): start].tobytes())
    body = buffer[: buffer.nbytes - _DIGEST_BYTES]
    digest = hashlib.blake2b(body.data, digest_size=_DIGEST_BYTES).digest()
    if digest != buffer[body.nbytes:].tobytes():
        expected = _expected_size(buffer, start, header_bytes)
        if expected is not None and expected > buffer.nbytes:
            raise SnapshotError(f"truncated: {buffer.nbytes} of {expected} bytes")
        raise SnapshotError("checksum mismatch: the file is corrupted")
    if start + header_bytes > body.nbytes:
        raise SnapshotError(f"header length {header_bytes} runs past the end of the file")
    header = _parse_header(buffer[start: start + header_bytes].data)
    offsets, end = _layout(header, start + header_bytes)
    if end != buffer.nbytes:
        raise SnapshotError(f"header describes {end} bytes but the file has {buffer.nbytes}")
    buffers = [buffer[at: at + meta.nbytes] for at, meta in zip(offsets, header.arrays(),
                                                                 strict=True)]
    return _assemble(header, buffers)


def _layout(header: _Header, offset: int) -> tuple[list[int], int]:
    """Where each array starts when the header ends at ``offset``, and the file's size."""
    starts = []
    for meta in header.arrays():
        offset += _padding(offset)
        starts.append(offset)
        offset += meta.nbytes
    return starts, offset + _DIGEST_BYTES


def _expected_size(buffer: np.ndarray, start: int, header_bytes: int) -> int | None:
    """The file size the header describes (at least), or None when it cannot be read."""
    if start + header_bytes > buffer.nbytes:
        return start + header_bytes + _DIGEST_BYTES
    try:
        header = _parse_header(buffer[start: start + header_bytes].data)
    except SnapshotError:
        return None
    return _layout(header, start + header_bytes)[1]
