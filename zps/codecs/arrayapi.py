"""The codecs' encoders on a device: the array API standard only, for CuPy on a GPU (and
any other standard namespace; the tests run this under ``array_api_strict``).

Each encoder returns the parts the NumPy encoders send, in the same layout (the server
decodes them alike), and what the server will add for them, from which error feedback
keeps its residual on the device. Rounding follows the NumPy code: int8 with error
feedback rounds to nearest (ties to even), without it stochastically (``floor(x/s + u)``,
``u`` drawn on the device where the namespace can, else on the host); sign scales are
the block means of ``|x|`` in float64; topk keeps, of equal magnitudes at the cut, the
lowest indices. Only the parts ever leave the device (``zps.client.plans``).
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from zps.codecs.base import Codec, Encoded

FP16_MAX = float(np.finfo(np.float16).max)
INT8_MAX = 127
TOPK_MAX = int(np.iinfo(np.int32).max)  # topk's indices travel as int32
BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)  # np.packbits' order: the first value high


def encode(codec: Codec, array: Any) -> Encoded:
    """``array`` encoded by ``codec`` on its device (no error feedback)."""
    return _encode(codec, array, feedback=False)[0]


def encode_feedback(codec: Codec, residuals: dict[str, Any], name: str, delta: Any,
                    ) -> Encoded:
    """``delta`` plus the residual kept for ``name`` (on the device), encoded; the residual
    becomes what the encoding dropped. ``ValueError`` for NaN or inf, or a delta of
    another shape or dtype than the residual (which is then left as it was)."""
    xp = array_api_compat.array_namespace(delta)
    residual = residuals.get(name)
    _require_finite(xp, delta)
    if residual is None:
        total = xp.asarray(delta, copy=True)
    elif residual.shape != delta.shape or residual.dtype != delta.dtype:
        raise ValueError(f"{name!r} was {residual.dtype}{list(residual.shape)} and is now "
                         f"{delta.dtype}{list(delta.shape)}: error feedback needs the same "
                         "shape and dtype each push")
    else:
        total = residual + delta
        if not bool(xp.all(xp.isfinite(total))):  # two finite values overflowed: saturate
            limit = float(np.finfo(_dtype(total)).max)
            total = xp.clip(total, -limit, limit)
    try:
        encoded, decoded = _encode(codec, total, feedback=True)
    except ValueError:
        residuals[name] = total  # refused (beyond float32 for int8, sign): kept for later
        raise
    residuals[name] = total - decoded
    return encoded


def _encode(codec: Codec, array: Any, feedback: bool) -> tuple[Encoded, Any]:
    xp = array_api_compat.array_namespace(array)
    values = xp.reshape(array, (-1,))
    name = codec.name
    if name != "none":
        _require_finite(xp, values)
    if name == "none":
        parts, decoded = (values,), values
    elif name == "fp16" and hasattr(xp, "float16"):
        half = xp.astype(xp.clip(values, -FP16_MAX, FP16_MAX), xp.float16)
        parts, decoded = (half,), xp.astype(half, values.dtype)
    elif name == "fp16":  # the standard has no float16 (CuPy does): halve on the host
        half = np.clip(np.from_dlpack(values), -FP16_MAX, FP16_MAX).astype(np.float16)
        parts, decoded = (half,), xp.astype(xp.asarray(half.astype(_dtype(values))),
                                            values.dtype)
    elif name == "int8":
        parts, decoded = _int8(xp, codec, values, feedback)
    elif name == "sign":
        parts, decoded = _sign(xp, codec, values)
    elif name == "topk":
        parts, decoded = _topk(xp, codec, values)
    else:
        raise ValueError(f"codec {name} has no device encoder")
    params: dict[str, Any] = {}
    if name in ("int8", "sign"):
        params["block"] = codec.block  # type: ignore[attr-defined]
    elif name == "topk":
        params["k"] = int(parts[0].shape[0])
    encoded = Encoded(name, tuple(array.shape), _dtype(array).name, parts, params)
    return encoded, xp.reshape(decoded, array.shape)


def _blocks(xp: Any, values: Any, block: int) -> Any:
    """``values`` as rows of ``block``, the last padded with zeros."""
    size = values.shape[0]
    rows = -(-size // block)
    if rows * block != size:
        values = xp.concat([values, xp.zeros(rows * block - size, dtype=values.dtype)])
    return xp.reshape(values, (rows, block))


def _int8(xp: Any, codec: Any, values: Any, feedback: bool) -> tuple[tuple[Any, ...], Any]:
    block, size = codec.block, values.shape[0]
    rows = _blocks(xp, values, block)
    top = xp.max(xp.abs(rows), axis=1) if size else xp.zeros(0, dtype=values.dtype)
    if top.dtype == getattr(xp, "float16", None):
        top = xp.astype(top, xp.float32)
    scales = xp.astype(top / INT8_MAX, xp.float32)
    if not bool(xp.all(xp.isfinite(scales))):
        raise ValueError("the update holds values beyond float32's range; int8 and sign "
                         "scales are float32 and cannot encode it")
    over = xp.astype(scales, top.dtype) * INT8_MAX > top  # 127 * s must not pass max|x|
    scales = xp.where(over, xp.nextafter(scales, xp.zeros_like(scales)), scales)
    s = xp.reshape(xp.astype(scales, values.dtype), (-1, 1))
    steps = rows / xp.where(s > 0, s, xp.ones_like(s))
    if feedback:
        steps = xp.round(steps)
    else:
        steps = xp.floor(steps + _uniform(xp, codec, steps.shape, steps.dtype))
    q = xp.astype(xp.clip(steps, -INT8_MAX, INT8_MAX), xp.int8)
    decoded = xp.reshape(xp.astype(q, values.dtype) * s, (-1,))[:size]
    return (xp.reshape(q, (-1,))[:size], scales), decoded


def _uniform(xp: Any, codec: Any, shape: tuple[int, ...], dtype: Any) -> Any:
    """U[0, 1) on the device where the namespace has a generator (CuPy), else drawn by
    the codec's NumPy generator and copied over."""
    random = getattr(xp, "random", None)
    if random is not None and hasattr(random, "random"):
        return xp.astype(random.random(shape, dtype=xp.float32), dtype)
    draws = codec._generator().random(shape, dtype=np.float32)
    return xp.astype(xp.asarray(draws), dtype)


def _sign(xp: Any, codec: Any, values: Any) -> tuple[tuple[Any, ...], Any]:
    block, size = codec.block, values.shape[0]
    rows = _blocks(xp, values, block)
    counts = xp.clip(size - block * xp.arange(rows.shape[0], dtype=xp.int64), 0, block)
    sums = xp.sum(xp.astype(xp.abs(rows), xp.float64), axis=1)
    scales = xp.astype(sums / xp.astype(counts, xp.float64), xp.float32)
    if not bool(xp.all(xp.isfinite(scales))):
        raise ValueError("the update holds values beyond float32's range; int8 and sign "
                         "scales are float32 and cannot encode it")
    positive = values >= 0
    padded = -(-size // 8) * 8
    bits = xp.astype(positive, xp.uint8)
    if padded != size:
        bits = xp.concat([bits, xp.zeros(padded - size, dtype=xp.uint8)])
    weights = xp.asarray(BIT_WEIGHTS, dtype=xp.uint8)
    packed = xp.sum(xp.reshape(bits, (-1, 8)) * weights, axis=1, dtype=xp.uint8)
    s = xp.reshape(xp.astype(scales, values.dtype), (-1, 1))
    per_value = xp.reshape(xp.broadcast_to(s, rows.shape), (-1,))[:size]
    return (packed, scales), xp.where(positive, per_value, -per_value)


def _topk(xp: Any, codec: Any, values: Any) -> tuple[tuple[Any, ...], Any]:
    size = values.shape[0]
    if size > TOPK_MAX:
        raise ValueError(f"topk encodes tensors of at most {TOPK_MAX} values (int32 "
                         f"indices), got {size}")
    k = codec.k_for(size)
    order = xp.argsort(-xp.abs(values), stable=True)  # ties: the lower index first
    rank = xp.argsort(order, stable=True)  # where each value stands in that order
    idx = xp.astype(xp.sort(order[:k]), xp.int32)
    sent = xp.take(values, xp.astype(idx, xp.int64))
    return (idx, sent), xp.where(rank < k, values, xp.zeros_like(values))


def _require_finite(xp: Any, array: Any) -> None:
    if not bool(xp.all(xp.isfinite(array))):
        raise ValueError("the update contains NaN or inf; lossy codecs cannot encode it")


def _dtype(array: Any) -> np.dtype:
    return np.dtype(str(array.dtype).rsplit(".", 1)[-1])
