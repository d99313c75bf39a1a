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
from zps.client.plans import Message
from zps.client.rowplace import RowBatch, batch
from zps.codecs import Codec
from zps.errors import ConfigError, ShapeMismatchError, UnknownTableError
from zps.protocol import EncodedMeta, Op, TensorMeta
from zps.store.errors import BadRowSpec
from zps.store.rows import RowSpec, parse_row_spec

ROW_CODECS = ("fp16", "int8")


class RowCalls:
    """What a client knows about row tables (their settings), and their calls."""

    def __init__(self, servers: int, chunk_bytes: int, codec: Codec | None = None) -> None:
        self.servers = servers
        self.chunk_bytes = chunk_bytes
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
        messages = [Message(s, Op.PULL_ROWS, (), (_meta("ids", part),), (part,), (name,))
                    for s, part in enumerate(_parts(split))]
        return Call(Op.PULL_ROWS, messages, finish=lambda call: _merged(call, split, spec))

    def push(self, name: str, ids: Any, updates: Any, pull_ids: Any | None,
             options: dict[str, Any], pull: bool) -> Call:
        spec = self.spec(name)
        ids = _ids(name, ids)
        rows = np.asarray(updates, dtype=spec.dtype)
        if rows.shape != (*ids.shape, spec.dim):
            raise ShapeMismatchError(
                "shape_mismatch", f"row updates for {name!r} must have shape "
                f"{(*ids.shape, spec.dim)} (the ids' shape plus the table's dim), got "
                f"{rows.shape}")
        split = batch(ids, self.servers)
        summed = split.summed(rows)
        pulled = batch(_ids(name, pull_ids), self.servers) if pull_ids is not None else split
        op = Op.PUSH_PULL_ROWS if pull else Op.PUSH_ROWS
        messages = []
        first = True
        for s, (part, index, wanted) in enumerate(zip(_parts(split), split.parts,
                                                      _parts(pulled), strict=True)):
            chunk = np.ascontiguousarray(summed[index])
            tensors = [_meta("ids", part)]
            buffers: list[Any] = [part]
            packed: tuple[EncodedMeta, ...] = ()
            if self.codec is None:
                tensors.append(TensorMeta.of("updates", chunk))
                buffers.append(chunk)
            if pull:
                tensors.append(_meta("pull", wanted))
                buffers.append(wanted)
            if self.codec is not None:
                encoded = self.codec.encode(np, chunk)
                packed = (EncodedMeta("updates", encoded.codec, encoded.params, encoded.dtype,
                                      encoded.shape, tuple((str(p.dtype), int(p.nbytes))
                                                           for p in encoded.parts)),)
                buffers.extend(encoded.parts)
            extra = dict(options) if first else {k: v for k, v in options.items()
                                                 if k != "loss"}  # one loss report a push
            first = False
            messages.append(Message(s, op, (), tuple(tensors), tuple(buffers), (name,), extra,
                                    packed))
        if not pull:
            return Call(op, messages, finish=lambda call: None)
        return Call(op, messages, finish=lambda call: _merged(call, pulled, spec))


def _ids(name: str, ids: Any) -> np.ndarray:
    array = np.asarray(ids)
    if array.dtype.kind not in "iu" or (array.dtype.kind == "u" and array.size
                                         and int(array.max()) > 2**63 - 1):
        raise ShapeMismatchError("bad_dtype", f"row ids of {name!r} must be integers "
                                              f"(int64), got {array.dtype}")
    return array.astype(np.int64, copy=False)


def _parts(split: RowBatch) -> list[np.ndarray]:
    return [np.ascontiguousarray(split.unique[part]) for part in split.parts]


def _meta(name: str, ids: np.ndarray) -> TensorMeta:
    return TensorMeta(name, "int64", ids.shape, int(ids.nbytes))


def _merged(call: Call, split: RowBatch, spec: RowSpec) -> np.ndarray:
    rows = []
    for reply, part in zip(call.replies, split.parts, strict=True):
        got = reply.arrays().get("rows") if reply is not None else None
        if got is None or got.shape != (part.size, spec.dim):
            raise ShapeMismatchError("bad_shape", "a server sent rows that do not match the "
                                                  "ids asked for")
        rows.append(got)
    return split.merged(rows, spec.dim, np.dtype(spec.dtype))
