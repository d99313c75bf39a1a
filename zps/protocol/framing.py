"""Requests and replies to and from frames (sans-IO).

``decode_request`` is the server's gate: it checks version, op, every header field's type,
the frame count, the dtype whitelist, and that each buffer's length agrees with its shape,
all before the server looks at its state. Anything wrong raises ``DecodeError`` (a
``ProtocolError``) naming the problem; nothing else can escape it. Replies are checked the
same way on the client, against the limits the client is configured with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack

from zps.errors import ProtocolError
from zps.protocol.fields import (
    DEFAULT_LIMITS,
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
    request_id_of,
    tensor_list,
    unpack_header,
)
from zps.protocol.messages import (
    DTYPES,
    ID_DTYPE,
    NAME_OPS,
    PROTOCOL_VERSION,
    REPLY_DTYPES,
    ROW_FRAMES,
    ROW_OPS,
    ROW_TENSOR_DTYPES,
    TENSOR_OPS,
    EncodedMeta,
    Op,
    Reply,
    Request,
    TensorMeta,
)
from zps.protocol.templates import TemplateCache, prefix, suffix

_OPS: dict[str, Op] = {op.value: op for op in Op}
PREFIXES_KEPT = 256  # kinds of request a client keeps packed
_DATA_OPS = TENSOR_OPS | NAME_OPS


# ---------------------------------------------------------------- encoding


def encode_request(request: Request) -> list[Any]:
    """Frames for ``request``: the msgpack header (in template form: its id and watermark
    last, fixed width), then its buffers unchanged (zero-copy)."""
    return [request_prefix(request) + suffix(request.request_id, request.watermark),
            *request.buffers]


class RequestEncoder:
    """``encode_request`` for a client: the prefix of each kind of request it sends without
    options (pushes, pulls of the same tables step after step) is packed once."""

    def __init__(self) -> None:
        self._known: dict[tuple[Any, ...], bytes] = {}

    def frames(self, request: Request) -> list[Any]:
        if request.options or request.encoded:  # (a loss, codec scales: new each call)
            head = request_prefix(request)
        else:
            key = (request.op, request.client_id, request.tensors, request.names,
                   request.watermark is not None)
            found = self._known.get(key)
            if found is None:
                if len(self._known) >= PREFIXES_KEPT:
                    self._known.clear()
                found = self._known[key] = request_prefix(request)
            head = found
        return [head + suffix(request.request_id, request.watermark), *request.buffers]


def request_prefix(request: Request) -> bytes:
    """The header of ``request`` without its id and watermark, which ``suffix`` appends:
    the same for every request of one kind (``zps.protocol.templates``)."""
    header: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "op": str(request.op),
        "c": request.client_id,
    }
    if request.tensors:
        header["t"] = [meta_to_wire(m) for m in request.tensors]
    if request.names:
        header["n"] = list(request.names)
    if request.encoded:
        header["z"] = encoded_to_wire(request.encoded)
    if request.options:
        header["o"] = request.options
    return prefix(header, request.watermark is not None)


def encode_reply(reply: Reply) -> list[Any]:
    """Frames for ``reply``: the msgpack header, then its buffers unchanged (zero-copy)."""
    header: dict[str, Any] = {"v": PROTOCOL_VERSION, "r": reply.request_id}
    if reply.error is not None:
        header["e"] = list(reply.error)
    if reply.tensors:
        header["t"] = [meta_to_wire(m) for m in reply.tensors]
    if reply.encoded:
        header["z"] = encoded_to_wire(reply.encoded)
    if reply.info:
        header["i"] = reply.info
    return [msgpack.packb(header), *reply.buffers]


# ---------------------------------------------------------------- requests


def decode_request(frames: Sequence[Any], limits: Limits = DEFAULT_LIMITS,
                   templates: TemplateCache | None = None) -> Request:
    """Validate ``frames`` and build the ``Request`` they carry (with ``templates``, a
    header whose prefix was validated before is checked only where it differs).

    Raises ``DecodeError`` (a ``ProtocolError``) for any malformed input, and nothing else.
    """
    if not frames:
        raise DecodeError("bad_frames", "empty message: expected a header frame")
    if templates is not None:
        known = templates.decode(frames)
        if known is not None:
            return known
    request = _decode_request(frames, limits)
    if templates is not None:
        templates.learn(frames[0], request, request_prefix)
    return request


def _decode_request(frames: Sequence[Any], limits: Limits) -> Request:
    header = unpack_header(frames[0], limits)
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
        exc.request_id = request_id_of(header.get("r"))
        raise


def _build_request(header: dict[Any, Any], buffers: Sequence[Any], limits: Limits) -> Request:
    check_version(header)
    op = _field_op(header)
    client_id = header.get("c")
    if not isinstance(client_id, str) or not 0 < len(client_id) <= limits.max_client_id_length:
        raise DecodeError("bad_header", f"client id 'c' must be a string of "
                                        f"1..{limits.max_client_id_length} chars")
    request_id = request_id_of(header.get("r"))
    if request_id is None:
        raise DecodeError("bad_header", "request id 'r' must be an integer in [0, 2**63)")
    watermark = header.get("w")
    if watermark is not None and (request_id_of(watermark) is None or watermark > request_id):
        raise DecodeError("bad_header", "watermark 'w' must be an integer in [0, r]: the "
                                        "client's lowest unfinished request id")
    tensors = tensor_list(header, limits, ROW_TENSOR_DTYPES if op in ROW_OPS else DTYPES)
    names = _field_names(header, limits)
    encoded = encoded_list(header, limits)
    options = header.get("o", {})
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise DecodeError("bad_header", "options 'o' must be a map with string keys")
    if encoded and op not in (Op.PUSH, Op.PUSH_PULL, Op.PUSH_ROWS, Op.PUSH_PULL_ROWS):
        raise DecodeError("bad_header", f"{op} carries no compressed tensors")
    all_names = [m.name for m in tensors] + [m.name for m in encoded]
    if len(set(all_names)) != len(all_names):
        raise DecodeError("bad_header", "a table name appears twice in one message")
    if op in ROW_OPS:
        _check_row_frames(op, tensors, encoded, names)
    else:
        _check_op_shape(op, bool(tensors or encoded), bool(names))
    check_frames(frame_sizes(tensors, encoded), buffers)
    return Request(op, client_id, request_id, tensors, names, options, tuple(buffers), encoded,
                   watermark)


def _field_op(header: dict[Any, Any]) -> Op:
    op = header.get("op")
    found = _OPS.get(op) if isinstance(op, str) else None
    if found is None:
        known = ", ".join(_OPS)
        raise DecodeError("bad_op", f"unknown op {op!r}; expected one of: {known}")
    return found


def _field_names(header: dict[Any, Any], limits: Limits) -> tuple[str, ...]:
    raw = header.get("n", [])
    if not isinstance(raw, list) or len(raw) > limits.max_tensors:
        raise DecodeError("bad_header", f"names 'n' must be a list of at most {limits.max_tensors}")
    names = tuple(check_name(n, limits) for n in raw)
    if len(set(names)) != len(names):
        raise DecodeError("bad_header", "a table name appears twice in one message")
    return names


def _check_row_frames(op: Op, tensors: tuple[TensorMeta, ...], encoded: tuple[EncodedMeta, ...],
                      names: tuple[str, ...]) -> None:
    """A row op names one table and carries exactly the frames of its op: ``ids`` and
    ``pull`` 1-D int64, ``updates`` 2-D float with a row per id (dense, or compressed)."""
    wanted = ROW_FRAMES[op]
    dense = tuple(m.name for m in tensors)
    packed = tuple(m.name for m in encoded)
    if packed not in ((), ("updates",)) or len(names) != 1 or \
            tuple(n for n in wanted if n not in packed) != dense:
        raise DecodeError("bad_header", f"{op} names one table in 'n' and carries the frames "
                                        f"{list(wanted)} in this order")
    for meta in tensors:
        ids = meta.name != "updates"
        if ids and (meta.dtype != ID_DTYPE or len(meta.shape) != 1):
            raise DecodeError("bad_dtype", f"{op} {meta.name} must be a 1-D int64 array")
        if not ids and (meta.dtype == ID_DTYPE or len(meta.shape) != 2
                        or meta.shape[0] != tensors[0].shape[0]):
            raise DecodeError("bad_shape", f"{op} updates must be a float array of one row "
                                           "per id")
    for packed_meta in encoded:
        if len(packed_meta.shape) != 2 or packed_meta.shape[0] != tensors[0].shape[0]:
            raise DecodeError("bad_shape", f"{op} updates must be one row per id")


def _check_op_shape(op: Op, has_tensors: bool, has_names: bool) -> None:
    if op in TENSOR_OPS and (not has_tensors or has_names):
        raise DecodeError("bad_header", f"{op} carries tensors 't' and no names 'n'")
    if op in NAME_OPS and (has_tensors or not has_names):
        raise DecodeError("bad_header", f"{op} carries table names 'n' and no tensors")
    if op not in _DATA_OPS and (has_tensors or has_names):
        raise DecodeError("bad_header", f"{op} carries no tensors and no names")


# ---------------------------------------------------------------- replies


def decode_reply(frames: Sequence[Any], limits: Limits = DEFAULT_LIMITS) -> Reply:
    """Build the ``Reply`` in ``frames`` (client side). Raises ``ProtocolError`` if malformed."""
    if not frames:
        raise ProtocolError("bad_frames", "empty reply")
    reply = decode_reply_header(frames[0], limits)
    check_frames(frame_sizes(reply.tensors, reply.encoded), frames[1:])
    return Reply(reply.request_id, reply.tensors, reply.info, reply.error, tuple(frames[1:]),
                 reply.encoded)


def decode_reply_header(frame: Any, limits: Limits = DEFAULT_LIMITS) -> Reply:
    """The ``Reply`` a header frame announces, without its buffers (for a receiver that
    reads the array frames straight into its own arrays). Raises ``ProtocolError``."""
    header = unpack_header(frame, limits)
    check_version(header)
    request_id = header.get("r")
    if request_id is not None and not is_int(request_id):
        raise ProtocolError("bad_header", "reply request id 'r' must be an integer or nil")
    error = header.get("e")
    tensors: tuple[TensorMeta, ...] = tensor_list(header, limits, REPLY_DTYPES)
    encoded = encoded_list(header, limits)
    info = header.get("i", {})
    if not isinstance(info, dict):
        raise ProtocolError("bad_header", "reply info 'i' must be a map")
    if error is not None:
        if not (isinstance(error, list) and len(error) == 2
                and all(isinstance(part, str) for part in error)):
            raise ProtocolError("bad_header", "error 'e' must be [code, message]")
        error = (error[0], error[1])
    return Reply(request_id, tensors, info, error, (), encoded)
