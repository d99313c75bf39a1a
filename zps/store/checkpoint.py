"""Checkpoint files: a snapshot's header and arrays between magic bytes and a checksum.

    MAGIC | header length (u64 LE) | header | pad to 64 | array, pad to 64 ... | blake2b-256

Arrays are little-endian and each starts 64-byte aligned, so reading a file takes one read
and then only ``np.frombuffer`` views. A write goes to a temporary file, is fsynced and
renamed into place, then the folder is fsynced: a crash leaves the previous checkpoint.
A checkpoint folder belongs to one server, and that server writes one checkpoint at a time
(``zps.server.checkpoints`` runs them in one thread); reading validates everything and
raises ``SnapshotError`` naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from zps.store.snapshot import (
    Snapshot,
    SnapshotError,
    SnapshotLayout,
    assemble,
    encode_snapshot,
    parse_header,
)

FILE_MAGIC = b"ZPSCKPT\x00"
_ALIGN = 64
_PREFIX = struct.Struct("<Q")  # header length, after FILE_MAGIC
_DIGEST_BYTES = 32
_CHECKPOINT_NAME = re.compile(r"ckpt-(\d+)-(\d+)\.zps")
_TEMP_PREFIX, _TEMP_SUFFIX = ".ckpt-", ".tmp"


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
    header, arrays = encode_snapshot(snapshot)
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

    Arrays are writable, 64-byte aligned views of that one buffer, which belongs to the
    caller (``restore_store(..., adopt=True)`` takes them without a copy). Raises
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
    header = parse_header(buffer[start: start + header_bytes].data)
    offsets, end = _layout(header, start + header_bytes)
    if end != buffer.nbytes:
        raise SnapshotError(f"header describes {end} bytes but the file has {buffer.nbytes}")
    buffers = [buffer[at: at + meta.nbytes] for at, meta in zip(offsets, header.arrays(),
                                                                 strict=True)]
    return assemble(header, buffers, writable=True)


def _layout(header: SnapshotLayout, offset: int) -> tuple[list[int], int]:
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
        header = parse_header(buffer[start: start + header_bytes].data)
    except SnapshotError:
        return None
    return _layout(header, start + header_bytes)[1]
