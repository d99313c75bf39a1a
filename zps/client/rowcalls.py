"""The calls of row tables, built the same way for both clients (sans-IO).

A batch of ids is deduplicated (updates of repeated ids summed) and split over every
server by the fixed id hash; each server gets one message, possibly with no ids at all (in
sync mode every worker's push must reach every server's round). Replies are merged back
into the shape of the ids given.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from zps.client.calls import Call
from zps.client.plans import Message, header_allowance
from zps.codecs import Codec
from zps.errors import ConfigError, RejectedError, ShapeMismatchError, UnknownTableError
from zps.protocol import EncodedMeta, Op, TensorMeta
from zps.store.errors import BadRowSpec
from zps.store.rowplace import RowBatch, batch
from zps.store.rows import RowSpec, parse_row_spec

ROW_CODECS = ("fp16", "int8")


class RowCalls:
    """What a client knows about row tables (their settings), and their calls."""

    def __init__(self, servers: int, chunk_bytes: int, codec: Codec | None = None,
                 limits: list[int | None] | None = None) -> None:
        self.servers = servers
        self.chunk_bytes = chunk_bytes
        self.limits = limits if limits is not None else []  # each server's message limit
        self.specs: dict[str, RowSpec] = {}
        # Row updates travel through the push codec when it is fp16 or int8 (without
        # error feedback: there is no residual per id); other codecs send them raw.
        self.codec = codec if codec is not None and codec.name in ROW_CODECS else None

    def init(self, name: str, settings: dict[str, Any]) -> Call:
        """``init_rows`` on every server (each holds its shard of the table)."""
        if not isinstance(name, str) or not name or "[" in name or "]" in name:
            raise ConfigError(f"table name {name!r} must be a non-empty string without '[]'")
        try:
            spec = parse_row_spec(settings)
        except BadRowSpec as exc:
            raise ConfigError(str(exc)) from None
        messages = [Message(s, Op.INIT_ROWS, (), names=(name,), options={
            "spec": spec.to_wire(), "layout": [self.servers, self.chunk_bytes, s]})
            for s in range(self.servers)]

        def finish(call: Call) -> None:
            self.specs[name] = spec
        return Call(Op.INIT_ROWS, messages, finish=finish)

    def learn(self, tables: list[dict[str, Any]]) -> None:
        """Row table settings from a server's ``tables`` answer."""
        for entry in tables:
            if entry.get("kind") == "rows" and isinstance(entry.get("name"), str):
                self.specs[entry["name"]] = parse_row_spec(entry.get("spec"))

    def spec(self, name: str) -> RowSpec:
        found = self.specs.get(name)
        if found is None:
            raise UnknownTableError("unknown_table", f"no row table {name!r} on the servers; "
                                                     "call init_rows() with it first")
        return found

    def pull(self, name: str, ids: Any) -> Call:
        spec = self.spec(name)
        split = batch(_ids(name, ids), self.servers)
        messages = self._pull_pieces(name, spec, _parts(split), Op.PULL_ROWS, "ids")
        return Call(Op.PULL_ROWS, messages,
                    finish=lambda call: _merged(call, split, spec, self.servers))

    def _pull_pieces(self, name: str, spec: RowSpec, parts: list[np.ndarray], op: Op,
                     frame: str) -> list[Message]:
        """Pulls of each server's ids, in pieces whose replies stay under ``chunk_bytes``
        (a reply is built in one go on the server: a bound keeps every turn short)."""
        row_bytes = spec.dim * np.dtype(spec.dtype).itemsize
        messages = []
        for s, part in enumerate(parts):
            per_piece = max(1, self._bound(s) // row_bytes)
            messages += [Message(s, op, (), (_meta(frame, piece),), (piece,), (name,))
                         for piece in np.array_split(part, max(1, -(-part.size // per_piece)))]
        return messages

    def _bound(self, server: int) -> int:
        """The largest reply ``server`` sends: ``chunk_bytes``, or less if its message
        limit is lower (it refuses to build a larger reply)."""
        limit = self.limits[server] if server < len(self.limits) else None
        return self.chunk_bytes if limit is None else max(
            1, min(self.chunk_bytes, limit - header_allowance(limit)))

    def push(self, name: str, ids: Any, updates: Any, pull_ids: Any | None,
             options: dict[str, Any], pull: bool) -> Call:
        spec = self.spec(name)
        ids = _ids(name, ids)
        given = np.asarray(updates)
        if given.dtype.kind not in "fiu":
            raise ShapeMismatchError("bad_dtype", f"row updates for {name!r} must be real "
                                                  f"numbers, got {given.dtype}")
        rows = given.astype(spec.dtype, copy=False)
        if rows.shape != (*ids.shape, spec.dim):
            raise ShapeMismatchError(
                "shape_mismatch", f"row updates for {name!r} must have shape "
                f"{(*ids.shape, spec.dim)} (the ids' shape plus the table's dim), got "
                f"{rows.shape}")
        split = batch(ids, self.servers)
        summed = split.summed(rows)
        pulled = batch(_ids(name, pull_ids), self.servers) if pull_ids is not None else split
        wanted = _parts(pulled)
        row_bytes = spec.dim * np.dtype(spec.dtype).itemsize
        # The pull half rides along when it is small; else it follows as pulls in pieces
        # (on the same sockets, so after the push, and waiting for its round like it).
        along = pull and all(p.size * row_bytes <= self._bound(s) for s, p in enumerate(wanted))
        op = Op.PUSH_PULL_ROWS if along else Op.PUSH_ROWS
        messages = []
        for s, (part, index) in enumerate(zip(_parts(split), split.parts, strict=True)):
            # (every server hears the loss: each keeps its own rates, as for dense pushes)
            message = self._push_message(s, op, name, part, summed[index],
                                         wanted[s] if along else None, dict(options))
            self._check_size(name, message)
            messages.append(message)
        if pull and not along:
            messages += self._pull_pieces(name, spec, wanted, Op.PULL_ROWS, "ids")
        if not pull:
            return Call(op, messages, finish=lambda call: None)
        pushes = len(split.parts)
        return Call(op, messages, finish=lambda call: _merged(
            call, pulled, spec, self.servers, skip=0 if along else pushes))

    def _push_message(self, server: int, op: Op, name: str, ids: np.ndarray,
                      updates: np.ndarray, pull: np.ndarray | None,
                      options: dict[str, Any]) -> Message:
        chunk = np.ascontiguousarray(updates)
        tensors = [_meta("ids", ids)]
        buffers: list[Any] = [ids]
        packed: tuple[EncodedMeta, ...] = ()
        if self.codec is None:
            tensors.append(TensorMeta.of("updates", chunk))
            buffers.append(chunk)
        if pull is not None:
            tensors.append(_meta("pull", pull))
            buffers.append(pull)
        if self.codec is not None:
            encoded = self.codec.encode(np, chunk)
            packed = (EncodedMeta("updates", encoded.codec, encoded.params, encoded.dtype,
                                  encoded.shape, tuple((str(p.dtype), int(p.nbytes))
                                                       for p in encoded.parts)),)
            buffers.extend(encoded.parts)
        return Message(server, op, (), tuple(tensors), tuple(buffers), (name,), options, packed)

    def _check_size(self, name: str, message: Message) -> None:
        """A push's part for one server travels as one message (it is one contribution to
        a sync round): refuse it before sending when that server would not take it."""
        limit = self.limits[message.server] if message.server < len(self.limits) else None
        size = sum(int(b.nbytes) for b in message.buffers)
        if limit is not None and size + header_allowance(limit) > limit:
            raise RejectedError(
                "too_large", f"the push of {name!r} rows to server {message.server} takes "
                f"{size} bytes, more than its limit of {limit}; push smaller batches or raise "
                "the server's --max-message-bytes")


def _ids(name: str, ids: Any) -> np.ndarray:
    array = np.asarray(ids)
    if array.size == 0:
        return array.astype(np.int64)  # (an empty list reads as float64)
    if array.dtype.kind not in "iu":
        raise ShapeMismatchError("bad_dtype", f"row ids of {name!r} must be integers "
                                              f"(int64), got {array.dtype}")
    return array.astype(np.int64, copy=False)  # (uint64 ids keep their bits, as int64)


def _parts(split: RowBatch) -> list[np.ndarray]:
    return [np.ascontiguousarray(split.unique[part]) for part in split.parts]


def _meta(name: str, ids: np.ndarray) -> TensorMeta:
    return TensorMeta(name, "int64", ids.shape, int(ids.nbytes))


def _merged(call: Call, split: RowBatch, spec: RowSpec, servers: int,
            skip: int = 0) -> np.ndarray:
    """The rows of the replies (after the first ``skip``: pushes), server by server, in
    the order the pieces were asked for, back into the shape of the ids."""
    got: list[list[np.ndarray]] = [[] for _ in range(servers)]
    for message, reply in list(zip(call.messages, call.replies, strict=True))[skip:]:
        rows = reply.arrays().get("rows") if reply is not None else None
        frame = "ids" if message.op == Op.PULL_ROWS else "pull"
        asked = next(m.shape[0] for m in message.tensors if m.name == frame)
        if rows is None or rows.shape != (asked, spec.dim):
            raise ShapeMismatchError("bad_shape", "a server sent rows that do not match the "
                                                  "ids asked for")
        got[message.server].append(rows)
    per_server = [np.concatenate(rows) if len(rows) != 1 else rows[0] for rows in got]
    return split.merged(per_server, spec.dim, np.dtype(spec.dtype))
