"""The replication stream to and from frames (sans-IO): numbered changes and heartbeats.

A primary publishes on PUB, a standby reads on SUB. Each message is a topic frame (so a
subscriber could filter), a msgpack header and the change's buffers, described exactly as a
request describes its tensors and checked by the same functions and limits:

- ``[b"c", header, *buffers]``: change ``s`` of epoch ``e`` to table ``n``: created (its
  initial value) or updated (the update, dense ``t`` or compressed ``z``, and its scale
  ``g``), with the requests ``q`` it carries;
- ``[b"h", header]``: a heartbeat with the primary's change number and epoch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import msgpack

from zps.protocol.fields import (
    DEFAULT_LIMITS,
    MAX_ID,
    DecodeError,
    Limits,
    check_frames,
    check_name,
    check_version,
    encoded_list,
    encoded_to_wire,
    frame_sizes,
    is_int,
    meta_to_wire,
    tensor_list,
    unpack_header,
)
from zps.protocol.messages import (
    PROTOCOL_VERSION,
    ROW_TENSOR_DTYPES,
    Beat,
    ClientRequest,
    EncodedMeta,
    Replicated,
    TensorMeta,
)

CHANGE = b"c"
BEAT = b"h"
KINDS = ("apply", "create", "create_rows", "rows", "evict")
# What each kind of change carries: its frames' names (dense changes: one tensor named
# after the table, dense or compressed).
ROW_KINDS: dict[str, tuple[str, ...]] = {"create_rows": (), "rows": ("ids", "updates"),
                                         "evict": ("ids",)}


def encode_change(change: Replicated) -> list[Any]:
    """The PUB message for ``change`` (its buffers zero-copy: they are never written again)."""
    header: dict[str, Any] = {
        "v": PROTOCOL_VERSION, "s": change.seq, "e": change.epoch, "n": change.table,
        "ver": change.version, "k": change.kind, "g": change.scale,
        "q": [list(r) for r in change.requests],
    }
    if change.meta:
        header["m"] = change.meta
    if change.tensor is not None:
        header["t"] = [meta_to_wire(change.tensor)]
    elif change.row_tensors:
        header["t"] = [meta_to_wire(m) for m in change.row_tensors]
    if change.encoded is not None:
        header["z"] = encoded_to_wire([change.encoded])
    return [CHANGE, msgpack.packb(header), *change.buffers]


def encode_beat(beat: Beat) -> list[Any]:
    return [BEAT, msgpack.packb({"v": PROTOCOL_VERSION, "s": beat.seq, "e": beat.epoch})]


def decode_stream(frames: Sequence[Any], limits: Limits = DEFAULT_LIMITS) -> Replicated | Beat:
    """The change or heartbeat in ``frames``; ``DecodeError`` if it is malformed."""
    if len(frames) < 2:
        raise DecodeError("bad_frames", "a stream message has a topic and a header frame")
    topic = memoryview(frames[0]).tobytes()
    if topic not in (CHANGE, BEAT):
        raise DecodeError("bad_header", f"unknown stream topic {topic!r}")
    total = sum(memoryview(f).nbytes for f in frames)
    if total > limits.max_message_bytes:
        raise DecodeError("too_large", f"stream message of {total} bytes exceeds the limit of "
                                       f"{limits.max_message_bytes}")
    header = unpack_header(frames[1], limits)
    check_version(header)
    seq, epoch = _count(header, "s"), _count(header, "e")
    if topic == BEAT:
        if len(frames) != 2:
            raise DecodeError("bad_frames", "a heartbeat carries no buffers")
        return Beat(seq, epoch)
    return _change(header, seq, epoch, frames[2:], limits)


def _change(header: dict[Any, Any], seq: int, epoch: int, buffers: Sequence[Any],
            limits: Limits) -> Replicated:
    table = check_name(header.get("n"), limits)
    version = _count(header, "ver")
    kind = header.get("k")
    if kind not in KINDS:
        raise DecodeError("bad_header", f"change kind {kind!r} is not one of {KINDS}")
    scale = header.get("g")
    if not isinstance(scale, int | float) or isinstance(scale, bool) or not math.isfinite(scale):
        raise DecodeError("bad_header", "change scale 'g' must be a finite number")
    meta = header.get("m", {})
    if not isinstance(meta, dict) or not all(isinstance(k, str) for k in meta):
        raise DecodeError("bad_header", "change meta 'm' must be a map with string keys")
    if kind in ROW_KINDS:
        tensors = tensor_list(header, limits, ROW_TENSOR_DTYPES)
        encoded: tuple[EncodedMeta, ...] = ()
        if tuple(m.name for m in tensors) != ROW_KINDS[kind] or any(
                (m.name == "ids") != (m.dtype == "int64") for m in tensors) or (
                len(tensors) == 2 and (len(tensors[1].shape) != 2
                                       or tensors[1].shape[0] != tensors[0].shape[0])):
            raise DecodeError("bad_header", f"a {kind} change carries the frames "
                                            f"{list(ROW_KINDS[kind])}, ids int64")
    else:
        tensors = tensor_list(header, limits)
        encoded = encoded_list(header, limits)
        if len(tensors) + len(encoded) != 1 or (kind == "create" and encoded):
            raise DecodeError("bad_header", "a change carries one update, dense or "
                                            "compressed (a created table: its initial value)")
        if any(m.name != table for m in tensors) or any(m.name != table for m in encoded):
            raise DecodeError("bad_header", "a change's update must be named after its table")
    check_frames(frame_sizes(tensors, encoded), buffers)
    tensor: TensorMeta | None = tensors[0] if tensors and kind not in ROW_KINDS else None
    packed: EncodedMeta | None = encoded[0] if encoded else None
    return Replicated(seq, epoch, table, version, kind, float(scale),
                      _requests(header.get("q"), limits), meta, tensor, packed, tuple(buffers),
                      tensors if kind in ROW_KINDS else ())


def _requests(raw: Any, limits: Limits) -> tuple[ClientRequest, ...]:
    if not isinstance(raw, list) or len(raw) > 1 << 16:
        raise DecodeError("bad_header", "change requests 'q' must be a list")
    found = []
    for item in raw:
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
                and 0 < len(item[0]) <= limits.max_client_id_length
                and all(is_int(x) and 0 <= x <= MAX_ID for x in item[1:])):
            raise DecodeError("bad_header", "each change request must be [client id, request "
                                            "id, watermark]")
        found.append((item[0], item[1], item[2]))
    return tuple(found)


def _count(header: dict[Any, Any], key: str) -> int:
    value = header.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_ID:
        raise DecodeError("bad_header", f"stream field {key!r} must be an integer >= 0")
    return value
