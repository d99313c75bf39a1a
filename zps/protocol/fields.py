"""Checks of the header fields every zps message shares (sans-IO).

Requests, replies and the replication stream all describe their frames the same way: a
list of dense tensors ``t`` and of compressed ones ``z``. These functions validate those
descriptions against the ``Limits`` both ends are configured with, before any size is
multiplied or any buffer is looked at, and raise ``DecodeError`` naming the problem.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from zps.errors import ProtocolError
from zps.protocol.messages import DTYPES, PART_DTYPES, PROTOCOL_VERSION, EncodedMeta, TensorMeta

MAX_ID = 2**63 - 1
MAX_DIM = 2**40  # far above any real table, far below overflow in a product of 8 of them
MAX_PARTS = 8  # buffers of one compressed tensor
_ITEMSIZE: dict[str, int] = {name: np.dtype(name).itemsize
                             for name in (*PART_DTYPES, "int64", "uint32")}


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds every incoming message must respect (the same on both ends of a socket)."""

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


def is_int(value: Any) -> bool:
    """An integer that is not a bool (msgpack booleans would pass ``isinstance(int)``)."""
    return isinstance(value, int) and not isinstance(value, bool)


def request_id_of(value: Any) -> int | None:
    """``value`` if it is a valid request id, else None."""
    return value if is_int(value) and 0 <= value <= MAX_ID else None


def unpack_header(frame: Any, limits: Limits) -> dict[Any, Any]:
    """The msgpack map in ``frame``, after checking its size; ``DecodeError`` if it is not."""
    raw = memoryview(frame)
    if raw.nbytes > limits.max_header_bytes:
        raise DecodeError("bad_header", f"header frame of {raw.nbytes} bytes exceeds the "
                                        f"limit of {limits.max_header_bytes}")
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise DecodeError("bad_header", f"header is not valid msgpack ({exc})") from None
    if not isinstance(header, dict):
        raise DecodeError("bad_header", "header must be a msgpack map")
    return header


def check_version(header: dict[Any, Any]) -> None:
    version = header.get("v")
    if not is_int(version) or version != PROTOCOL_VERSION:
        raise DecodeError(
            "bad_version",
            f"protocol version {version!r} is not supported (this end speaks "
            f"{PROTOCOL_VERSION}); upgrade the client or the server so they match",
        )


def check_name(name: Any, limits: Limits) -> str:
    if not isinstance(name, str) or not 0 < len(name) <= limits.max_name_length:
        raise DecodeError(
            "bad_name", f"table name {name!r} must be a string of 1..{limits.max_name_length} chars"
        )
    return name


def check_shape(name: str, shape: Any, limits: Limits) -> tuple[int, ...]:
    """A shape list, checked for length first (so nothing huge is ever multiplied)."""
    if (not isinstance(shape, list) or len(shape) > limits.max_ndim
            or not all(is_int(d) and 0 <= d < MAX_DIM for d in shape)):
        raise DecodeError(
            "bad_shape",
            f"shape of {name!r} must be a list of at most {limits.max_ndim} non-negative ints",
        )
    return tuple(shape)


def tensor_list(header: dict[Any, Any], limits: Limits,
                dtypes: frozenset[str] = DTYPES) -> tuple[TensorMeta, ...]:
    """The dense tensors ``t`` a header announces."""
    raw = header.get("t", [])
    if not isinstance(raw, list) or len(raw) > limits.max_tensors:
        raise DecodeError("bad_header",
                          f"tensors 't' must be a list of at most {limits.max_tensors}")
    return tuple(tensor_meta(item, limits, dtypes) for item in raw)


def tensor_meta(item: Any, limits: Limits, dtypes: frozenset[str] = DTYPES) -> TensorMeta:
    if not isinstance(item, list) or len(item) != 4:
        raise DecodeError("bad_header", "each tensor entry must be [name, dtype, shape, nbytes]")
    name, dtype, shape, nbytes = item
    name = check_name(name, limits)
    if not isinstance(dtype, str) or dtype not in dtypes:
        allowed = ", ".join(sorted(dtypes))
        raise DecodeError("bad_dtype", f"dtype {dtype!r} of {name!r} is not one of: {allowed}")
    dims = check_shape(name, shape, limits)
    expected = math.prod(dims) * _ITEMSIZE[dtype]
    if not is_int(nbytes) or nbytes != expected:
        raise DecodeError(
            "bad_shape",
            f"{name!r}: byte count {nbytes!r} does not match shape {list(dims)} of {dtype} "
            f"({expected} bytes)",
        )
    return TensorMeta(name, dtype, dims, nbytes)


def encoded_list(header: dict[Any, Any], limits: Limits) -> tuple[EncodedMeta, ...]:
    """The compressed tensors ``z`` a header announces (the codec itself is checked by the
    receiver, which knows the codecs)."""
    raw = header.get("z", [])
    if not isinstance(raw, list) or len(raw) > limits.max_tensors:
        raise DecodeError("bad_header", "compressed tensors 'z' must be a list")
    return tuple(encoded_meta(item, limits) for item in raw)


def encoded_meta(item: Any, limits: Limits) -> EncodedMeta:
    if not isinstance(item, list) or len(item) != 6:
        raise DecodeError(
            "bad_header",
            "each compressed tensor must be [name, codec, params, dtype, shape, parts]",
        )
    name, codec, params, dtype, shape, parts = item
    name = check_name(name, limits)
    if not isinstance(codec, str) or not 0 < len(codec) <= 32:
        raise DecodeError("bad_header", f"{name!r}: codec must be a short string")
    if not isinstance(params, dict) or len(params) > 8 or not all(
            isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
            for k, v in params.items()):
        raise DecodeError("bad_header", f"{name!r}: codec params must map names to numbers")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise DecodeError("bad_dtype", f"{name!r}: compressed dtype {dtype!r} is not one of "
                                       f"{', '.join(sorted(DTYPES))}")
    dims = check_shape(name, shape, limits)
    if not isinstance(parts, list) or len(parts) > MAX_PARTS:
        raise DecodeError("bad_header", f"{name!r}: parts must be a list of [dtype, nbytes]")
    checked = []
    for part in parts:
        if not (isinstance(part, list) and len(part) == 2 and isinstance(part[0], str)
                and part[0] in PART_DTYPES and is_int(part[1]) and part[1] >= 0
                and part[1] % _ITEMSIZE[part[0]] == 0):
            raise DecodeError("bad_dtype", f"{name!r}: bad compressed part {part!r}")
        checked.append((part[0], part[1]))
    return EncodedMeta(name, codec, params, dtype, dims, tuple(checked))


def frame_sizes(tensors: Sequence[TensorMeta], encoded: Sequence[EncodedMeta]) -> list[int]:
    """The byte count of each array frame a header announces, in order."""
    return [m.nbytes for m in tensors] + [n for m in encoded for _, n in m.parts]


def check_frames(sizes: list[int], buffers: Sequence[Any]) -> None:
    """Every announced frame arrived, with the announced size."""
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


def meta_to_wire(meta: TensorMeta) -> list[Any]:
    return [meta.name, meta.dtype, list(meta.shape), meta.nbytes]


def encoded_to_wire(encoded: Sequence[EncodedMeta]) -> list[Any]:
    return [[m.name, m.codec, m.params, m.dtype, list(m.shape), [list(p) for p in m.parts]]
            for m in encoded]
