"""Turn messages into frames and frames back into validated messages (sans-IO).

``decode_request`` is the server's gate: it checks version, op, every header field's type,
the frame count, the dtype whitelist, and that each buffer's length agrees with its shape,
all before the server looks at its state. Anything wrong raises ``ProtocolError`` naming
the problem; nothing else can escape it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from zps.errors import ProtocolError
from zps.protocol.messages import (
    DTYPES,
    NAME_OPS,
    PART_DTYPES,
    PROTOCOL_VERSION,
    TENSOR_OPS,
    EncodedMeta,
    Op,
    Reply,
    Request,
    TensorMeta,
)

_MAX_REQUEST_ID = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds every incoming message must respect."""

    max_message_bytes: int = 1 << 30
    max_header_bytes: int = 1 << 20
    max_tensors: int = 4096
    max_name_length: int = 256
    max_client_id_length: int = 128
    max_ndim: int = 8


DEFAULT_LIMITS = Limits()


class DecodeError(ProtocolError):
    """A ``ProtocolError`` that also carries the request id when the header got that far."""

    def __init__(self, code: str, message: str, request_id: int | None = None) -> None:
        super().__init__(code, message)
        self.request_id = request_id


# ---------------------------------------------------------------- encoding


def encode_request(request: Request) -> list[Any]:
    """Frames for ``request``: the msgpack header, then its buffers unchanged (zero-copy)."""
    header: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "op": str(request.op),
        "c": request.client_id,
        "r": request.request_id,
    }
    if request.tensors:
        header["t"] = [_meta_to_wire(m) for m in request.tensors]
    if request.names:
        header["n"] = list(request.names)
    if request.encoded:
        header["z"] = _encoded_to_wire(request.encoded)
    if request.options:
        header["o"] = request.options
    return [msgpack.packb(header), *request.buffers]


def encode_reply(reply: Reply) -> list[Any]:
    """Frames for ``reply``: the msgpack header, then its buffers unchanged (zero-copy)."""
    header: dict[str, Any] = {"v": PROTOCOL_VERSION, "r": reply.request_id}
    if reply.error is not None:
        header["e"] = list(reply.error)
    if reply.tensors:
        header["t"] = [_meta_to_wire(m) for m in reply.tensors]
    if reply.encoded:
        header["z"] = _encoded_to_wire(reply.encoded)
    if reply.info:
        header["i"] = reply.info
    return [msgpack.packb(header), *reply.buffers]


def _meta_to_wire(meta: TensorMeta) -> list[Any]:
    return [meta.name, meta.dtype, list(meta.shape), meta.nbytes]


def _encoded_to_wire(encoded: tuple[EncodedMeta, ...]) -> list[Any]:
    return [[m.name, m.codec, m.params, m.dtype, list(m.shape), [list(p) for p in m.parts]]
            for m in encoded]


def frame_sizes(message: Request | Reply) -> list[int]:
    """The byte count of each array frame ``message``'s header announces, in order."""
    return [m.nbytes for m in message.tensors] + [n for m in message.encoded for _, n in m.parts]


# ---------------------------------------------------------------- decoding


def decode_request(frames: Sequence[Any], limits: Limits = DEFAULT_LIMITS) -> Request:
    """Validate ``frames`` and build the ``Request`` they carry.

    Raises ``DecodeError`` (a ``ProtocolError``) for any malformed input, and nothing else.
    """
    if not frames:
        raise DecodeError("bad_frames", "empty message: expected a header frame")
    header = _unpack_header(frames[0], limits)
    request_id = header.get("r")
    rid = request_id if isinstance(request_id, int) and not isinstance(request_id, bool) else None
    try:
        total = sum(memoryview(f).nbytes for f in frames)
        if total > limits.max_message_bytes:
            raise DecodeError(
                "too_large",
                f"message of {total} bytes exceeds the server's limit of "
                f"{limits.max_message_bytes} bytes; lower the client's chunk_bytes",
            )
        return _build_request(header, frames[1:], limits)
    except DecodeError as exc:
        exc.request_id = rid if rid is not None and 0 <= rid <= _MAX_REQUEST_ID else None
        raise


def _unpack_header(frame: Any, limits: Limits) -> dict[Any, Any]:
    raw = memoryview(frame)
    if raw.nbytes > limits.max_header_bytes:
        raise DecodeError("bad_header", f"header frame of {raw.nbytes} bytes is too large")
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise DecodeError("bad_header", f"header is not valid msgpack ({exc})") from None
    if not isinstance(header, dict):
        raise DecodeError("bad_header", "header must be a msgpack map")
    return header


def _build_request(header: dict[Any, Any], buffers: Sequence[Any], limits: Limits) -> Request:
    version = header.get("v")
    if version != PROTOCOL_VERSION:
        raise DecodeError(
            "bad_version",
            f"protocol version {version!r} is not supported (server speaks {PROTOCOL_VERSION}); "
            "upgrade the client or the server so they match",
        )
    op = _field_op(header)
    client_id = _field_str(header, "c", "client id", limits.max_client_id_length)
    request_id = header.get("r")
    if not isinstance(request_id, int) or isinstance(request_id, bool) \
            or not 0 <= request_id <= _MAX_REQUEST_ID:
        raise DecodeError("bad_header", "request id 'r' must be an integer in [0, 2**63)")
    tensors = _field_tensors(header, limits)
    names = _field_names(header, limits)
    encoded = _field_encoded(header, limits)
    options = header.get("o", {})
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise DecodeError("bad_header", "options 'o' must be a map with string keys")
    if encoded and op not in (Op.PUSH, Op.PUSH_PULL):
        raise DecodeError("bad_header", f"{op} carries no compressed tensors")
    all_names = [m.name for m in tensors] + [m.name for m in encoded]
    if len(set(all_names)) != len(all_names):
        raise DecodeError("bad_header", "a table name appears twice in one message")
    _check_op_shape(op, tensors or encoded, names)  # type: ignore[arg-type]
    request = Request(op, client_id, request_id, tensors, names, options, tuple(buffers), encoded)
    _check_frame_sizes(frame_sizes(request), buffers)
    return request


def _field_encoded(header: dict[Any, Any], limits: Limits) -> tuple[EncodedMeta, ...]:
    raw = header.get("z", [])
    if not isinstance(raw, list) or len(raw) > limits.max_tensors:
        raise DecodeError("bad_header", "compressed tensors 'z' must be a list")
    return tuple(_encoded_meta(item, limits) for item in raw)


def _encoded_meta(item: Any, limits: Limits) -> EncodedMeta:
    if not isinstance(item, list) or len(item) != 6:
        raise DecodeError(
            "bad_header",
            "each compressed tensor must be [name, codec, params, dtype, shape, parts]",
        )
    name, codec, params, dtype, shape, parts = item
    name = _check_name(name, limits)
    if not isinstance(codec, str) or not 0 < len(codec) <= 16:
        raise DecodeError("bad_header", f"{name!r}: codec must be a short string")
    if not isinstance(params, dict) or not all(
            isinstance(k, str) and isinstance(v, int | float) for k, v in params.items()):
        raise DecodeError("bad_header", f"{name!r}: codec params must map names to numbers")
    dense = _tensor_meta([name, dtype, shape, _dense_bytes(dtype, shape)], limits)
    if not isinstance(parts, list) or len(parts) > 8:
        raise DecodeError("bad_header", f"{name!r}: parts must be a list of [dtype, nbytes]")
    checked = []
    for part in parts:
        if not (isinstance(part, list) and len(part) == 2 and isinstance(part[0], str)
                and part[0] in PART_DTYPES and _is_int(part[1]) and part[1] >= 0
                and part[1] % np.dtype(part[0]).itemsize == 0):
            raise DecodeError("bad_dtype", f"{name!r}: bad compressed part {part!r}")
        checked.append((part[0], part[1]))
    return EncodedMeta(name, codec, params, dense.dtype, dense.shape, tuple(checked))


def _dense_bytes(dtype: Any, shape: Any) -> int:
    if isinstance(dtype, str) and dtype in DTYPES and isinstance(shape, list) and all(
            _is_int(d) and 0 <= d < 2**40 for d in shape):
        return math.prod(shape) * np.dtype(dtype).itemsize
    return -1  # _tensor_meta reports what is wrong


def _field_op(header: dict[Any, Any]) -> Op:
    op = header.get("op")
    try:
        return Op(op) if isinstance(op, str) else Op("")
    except ValueError:
        known = ", ".join(o.value for o in Op)
        raise DecodeError("bad_op", f"unknown op {op!r}; expected one of: {known}") from None


def _field_str(header: dict[Any, Any], key: str, what: str, max_len: int) -> str:
    value = header.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= max_len:
        raise DecodeError("bad_header", f"{what} {key!r} must be a string of 1..{max_len} chars")
    return value


def _check_name(name: Any, limits: Limits) -> str:
    if not isinstance(name, str) or not 0 < len(name) <= limits.max_name_length:
        raise DecodeError(
            "bad_name", f"table name {name!r} must be a string of 1..{limits.max_name_length} chars"
        )
    return name


def _field_tensors(header: dict[Any, Any], limits: Limits) -> tuple[TensorMeta, ...]:
    raw = header.get("t", [])
    if not isinstance(raw, list) or len(raw) > limits.max_tensors:
        raise DecodeError(
            "bad_header", f"tensors 't' must be a list of at most {limits.max_tensors}"
        )
    return tuple(_tensor_meta(item, limits) for item in raw)


def _tensor_meta(item: Any, limits: Limits) -> TensorMeta:
    if not isinstance(item, list) or len(item) != 4:
        raise DecodeError("bad_header", "each tensor entry must be [name, dtype, shape, nbytes]")
    name, dtype, shape, nbytes = item
    name = _check_name(name, limits)
    if not isinstance(dtype, str) or dtype not in DTYPES:
        allowed = ", ".join(sorted(DTYPES))
        raise DecodeError("bad_dtype", f"dtype {dtype!r} of {name!r} is not one of: {allowed}")
    if (
        not isinstance(shape, list)
        or len(shape) > limits.max_ndim
        or not all(_is_int(d) and 0 <= d < 2**40 for d in shape)
    ):
        raise DecodeError(
            "bad_shape",
            f"shape of {name!r} must be a list of at most {limits.max_ndim} non-negative ints",
        )
    expected = math.prod(shape) * np.dtype(dtype).itemsize
    if not _is_int(nbytes) or nbytes != expected:
        raise DecodeError(
            "bad_shape",
            f"{name!r}: byte count {nbytes!r} does not match shape {shape} of {dtype} "
            f"({expected} bytes)",
        )
    return TensorMeta(name, dtype, tuple(shape), nbytes)


def _field_names(header: dict[Any, Any], limits: Limits) -> tuple[str, ...]:
    raw = header.get("n", [])
    if not isinstance(raw, list) or len(raw) > limits.max_tensors:
        raise DecodeError("bad_header", f"names 'n' must be a list of at most {limits.max_tensors}")
    names = tuple(_check_name(n, limits) for n in raw)
    if len(set(names)) != len(names):
        raise DecodeError("bad_header", "a table name appears twice in one message")
    return names


def _check_op_shape(op: Op, tensors: tuple[TensorMeta, ...], names: tuple[str, ...]) -> None:
    if op in TENSOR_OPS and (not tensors or names):
        raise DecodeError("bad_header", f"{op} carries tensors 't' and no names 'n'")
    if op in NAME_OPS and (tensors or not names):
        raise DecodeError("bad_header", f"{op} carries table names 'n' and no tensors")
    if op not in TENSOR_OPS | NAME_OPS and (tensors or names):
        raise DecodeError("bad_header", f"{op} carries no tensors and no names")


def _check_frame_sizes(sizes: list[int], buffers: Sequence[Any]) -> None:
    if len(buffers) != len(sizes):
        raise DecodeError(
            "bad_frames",
            f"header announces {len(sizes)} array frames but {len(buffers)} arrived",
        )
    for i, (expected, buf) in enumerate(zip(sizes, buffers, strict=True)):
        size = memoryview(buf).nbytes
        if size != expected:
            raise DecodeError(
                "bad_frames", f"array frame {i} holds {size} bytes, header says {expected}"
            )


def decode_reply(frames: Sequence[Any]) -> Reply:
    """Build the ``Reply`` in ``frames`` (client side). Raises ``ProtocolError`` if malformed."""
    if not frames:
        raise ProtocolError("bad_frames", "empty reply")
    reply = decode_reply_header(frames[0])
    _check_frame_sizes(frame_sizes(reply), frames[1:])
    return Reply(reply.request_id, reply.tensors, reply.info, reply.error, tuple(frames[1:]),
                 reply.encoded)


def decode_reply_header(frame: Any) -> Reply:
    """The ``Reply`` a header frame announces, without its buffers (for a receiver that
    reads the array frames straight into its own arrays). Raises ``ProtocolError``."""
    header = _unpack_header(frame, DEFAULT_LIMITS)
    if header.get("v") != PROTOCOL_VERSION:
        raise ProtocolError("bad_version", f"reply speaks protocol {header.get('v')!r}")
    request_id = header.get("r")
    if request_id is not None and not _is_int(request_id):
        raise ProtocolError("bad_header", "reply request id 'r' must be an integer or nil")
    error = header.get("e")
    tensors = _field_tensors(header, DEFAULT_LIMITS)
    encoded = _field_encoded(header, DEFAULT_LIMITS)
    info = header.get("i", {})
    if not isinstance(info, dict):
        raise ProtocolError("bad_header", "reply info 'i' must be a map")
    if error is not None:
        if not (isinstance(error, list) and len(error) == 2
                and all(isinstance(part, str) for part in error)):
            raise ProtocolError("bad_header", "error 'e' must be [code, message]")
        error = (error[0], error[1])
    return Reply(request_id, tensors, info, error, (), encoded)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
