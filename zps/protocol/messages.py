"""Message types of the zps wire protocol: plain frozen dataclasses, no I/O.

A message is one msgpack header frame followed by one raw buffer frame per tensor. The
header lists the tensors (name, dtype, shape, byte count) in frame order, so the receiver
can check every buffer before it looks at a single byte of array data. The same framing
carries requests and replies (DEALER/ROUTER) and the replication stream (PUB/SUB).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PROTOCOL_VERSION = 2

# Table element types a server will store. Anything else is refused before it reaches state.
DTYPES: frozenset[str] = frozenset({"float32", "float64"})
# Element types a compressed tensor's buffers may have (the codecs' parts), and that a
# reply's frames may have (snapshot chunks carry their header as uint8).
PART_DTYPES: frozenset[str] = frozenset({"int8", "uint8", "int32", "float16", *DTYPES})
ID_DTYPE = "int64"  # row ids
ROW_TENSOR_DTYPES: frozenset[str] = frozenset({ID_DTYPE, *DTYPES})
# What a reply's frames may hold: the above, and a snapshot's row metadata.
REPLY_DTYPES: frozenset[str] = frozenset({*PART_DTYPES, ID_DTYPE, "uint32"})

# ``dtype.name`` is computed on every access; the hot path looks names up here instead.
_DTYPE_NAMES: dict[np.dtype, str] = {np.dtype(name): name
                                     for name in (*PART_DTYPES, "int64", "uint32")}


class Op(enum.StrEnum):
    """Operations a client can ask a server for; each maps to one server handler."""

    HELLO = "hello"
    INIT = "init"
    PUSH = "push"
    PULL = "pull"
    PUSH_PULL = "push_pull"
    HEARTBEAT = "heartbeat"
    STATS = "stats"
    BYE = "bye"
    # Replication and failover.
    TABLES = "tables"  # what tables a server holds (kinds, shapes, row table settings)
    # Row tables: rows of int64 ids (one table per message; frames "ids", "updates", "pull").
    INIT_ROWS = "init_rows"
    PULL_ROWS = "pull_rows"
    PUSH_ROWS = "push_rows"
    PUSH_PULL_ROWS = "push_pull_rows"
    SNAPSHOT = "snapshot"  # a standby asks for a consistent copy: the manifest and header
    SNAPSHOT_CHUNK = "snapshot_chunk"  # then reads its arrays a bounded piece at a time
    ACK = "ack"  # a standby tells its primary the sequence number it holds
    WATCH = "watch"  # a client asks a standby to answer once it has taken over


# Ops whose message carries tensors, and ops that carry names only.
TENSOR_OPS: frozenset[Op] = frozenset({Op.INIT, Op.PUSH, Op.PUSH_PULL})
NAME_OPS: frozenset[Op] = frozenset({Op.PULL})
# Ops on row tables: one table name, and the frames their op names.
ROW_OPS: frozenset[Op] = frozenset({Op.INIT_ROWS, Op.PULL_ROWS, Op.PUSH_ROWS,
                                    Op.PUSH_PULL_ROWS})
ROW_FRAMES: dict[Op, tuple[str, ...]] = {
    Op.INIT_ROWS: (), Op.PULL_ROWS: ("ids",), Op.PUSH_ROWS: ("ids", "updates"),
    Op.PUSH_PULL_ROWS: ("ids", "updates", "pull")}
# Ops that change state: they carry the client's watermark and are deduplicated.
UPDATE_OPS: frozenset[Op] = frozenset({Op.PUSH, Op.PUSH_PULL, Op.PUSH_ROWS,
                                       Op.PUSH_PULL_ROWS})


@dataclass(frozen=True, slots=True)
class TensorMeta:
    """Describes one array frame: which table it is for and how to read its bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int

    @classmethod
    def of(cls, name: str, array: np.ndarray) -> TensorMeta:
        """Metadata for sending ``array`` as table ``name``."""
        dtype = _DTYPE_NAMES.get(array.dtype) or array.dtype.name
        return cls(name, dtype, array.shape, array.nbytes)


@dataclass(frozen=True, slots=True)
class EncodedMeta:
    """Describes one compressed tensor: its codec, the dense shape and dtype it decodes
    to, codec parameters, and the (dtype, nbytes) of each of its buffers, in frame order."""

    name: str
    codec: str
    params: dict[str, Any]
    dtype: str
    shape: tuple[int, ...]
    parts: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Request:
    """A client's request, as decoded and validated by the server.

    ``watermark`` is the client's lowest request id still unfinished: every request of
    this client below it has been answered or given up, so the server may forget it.
    """

    op: Op
    client_id: str
    request_id: int
    tensors: tuple[TensorMeta, ...] = ()
    names: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    buffers: tuple[Any, ...] = ()  # one per tensor, then each encoded tensor's parts
    encoded: tuple[EncodedMeta, ...] = ()
    watermark: int | None = None

    def arrays(self) -> dict[str, np.ndarray]:
        """The tensors as read-only NumPy views on the received frames (no copy)."""
        return {m.name: as_array(m, b) for m, b in zip(self.tensors, self.buffers, strict=False)}

    def encoded_parts(self) -> dict[str, tuple[EncodedMeta, tuple[np.ndarray, ...]]]:
        """Each compressed tensor with its parts as NumPy views on the frames."""
        return {meta.name: (meta, parts)
                for meta, parts in encoded_views(self.tensors, self.encoded, self.buffers)}

    def table_names(self) -> list[str]:
        """The tables this request is about: its tensors' names, compressed ones, names."""
        return [*(m.name for m in self.tensors), *(m.name for m in self.encoded), *self.names]


@dataclass(frozen=True, slots=True)
class Reply:
    """A server's answer. ``error`` is ``(code, message)`` when the request failed."""

    request_id: int | None
    tensors: tuple[TensorMeta, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)
    error: tuple[str, str] | None = None
    buffers: tuple[Any, ...] = ()  # one per tensor, then each encoded tensor's parts
    encoded: tuple[EncodedMeta, ...] = ()  # compressed tensors (delta pulls)

    @property
    def ok(self) -> bool:
        return self.error is None

    def arrays(self) -> dict[str, np.ndarray]:
        """The tensors as NumPy views on the received frames (no copy)."""
        return {m.name: as_array(m, b) for m, b in zip(self.tensors, self.buffers, strict=False)}

    def dense_list(self) -> list[np.ndarray]:
        """The dense tensors in frame order (a delta reply may name a table twice)."""
        return [as_array(m, b) for m, b in zip(self.tensors, self.buffers, strict=False)]

    def encoded_list(self) -> list[tuple[EncodedMeta, tuple[np.ndarray, ...]]]:
        """The compressed tensors in frame order, parts as NumPy views on the frames."""
        return list(encoded_views(self.tensors, self.encoded, self.buffers))


ClientRequest = tuple[str, int, int]  # (client id, request id, that client's watermark)


@dataclass(frozen=True, slots=True)
class Replicated:
    """One numbered change on the replication stream: a table created (``kind`` "create",
    its initial value) or an update applied ("apply": what the primary's ``Store.apply``
    was given, dense or compressed, and its scale); for row tables "create_rows" (the
    settings in ``meta``), "rows" (ids and updates, ``meta["now"]`` the push's time) and
    "evict" (ids); with the requests it carries so a
    standby's request identity follows the primary's. ``meta`` holds the table's
    optimizer settings (create) and the cluster layout when the primary knows it."""

    seq: int
    epoch: int
    table: str
    version: int
    kind: str
    scale: float
    requests: tuple[ClientRequest, ...]
    meta: dict[str, Any]
    tensor: TensorMeta | None
    encoded: EncodedMeta | None
    buffers: tuple[Any, ...]
    row_tensors: tuple[TensorMeta, ...] = ()  # a row change's frames: ids (and updates)

    def dense(self) -> np.ndarray | None:
        """The dense update (or initial value) as a view on its frame, if it is dense."""
        return as_array(self.tensor, self.buffers[0]) if self.tensor is not None else None

    def row_arrays(self) -> dict[str, np.ndarray]:
        """A row change's frames (``ids``, ``updates``) as views."""
        return {m.name: as_array(m, b)
                for m, b in zip(self.row_tensors, self.buffers, strict=True)}

    def parts(self) -> tuple[np.ndarray, ...]:
        """The compressed update's parts as views on their frames."""
        if self.encoded is None:
            return ()
        return tuple(np.frombuffer(b, dtype=d)
                     for (d, _), b in zip(self.encoded.parts, self.buffers, strict=True))


@dataclass(frozen=True, slots=True)
class Beat:
    """A primary's heartbeat on the replication stream: its change number and epoch."""

    seq: int
    epoch: int


def encoded_views(
    tensors: tuple[TensorMeta, ...], encoded: tuple[EncodedMeta, ...], buffers: tuple[Any, ...]
) -> Iterator[tuple[EncodedMeta, tuple[np.ndarray, ...]]]:
    """Each compressed tensor of a message, its parts viewed on the frames after the dense
    tensors' ones."""
    at = len(tensors)
    for meta in encoded:
        yield meta, tuple(np.frombuffer(buffers[at + i], dtype=dtype)
                          for i, (dtype, _) in enumerate(meta.parts))
        at += len(meta.parts)


def as_array(meta: TensorMeta, buffer: Any) -> np.ndarray:
    """View ``buffer`` as the array ``meta`` describes, without copying."""
    return np.frombuffer(buffer, dtype=meta.dtype).reshape(meta.shape)
