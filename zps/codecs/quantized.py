"""Block-scaled quantization: ``int8`` (stochastic rounding) and ``sign`` (1 bit a value).

Both cut the tensor into blocks of ``block`` values (default 256), each with its own float32
scale, so one large value does not flatten the precision of the whole tensor. Encoding makes
two passes over the values, a row group of blocks at a time: the first finds the scales (and
refuses NaN or inf before anything is written), the second quantizes and, for error
feedback, leaves ``x - decode(x)`` in the caller's buffer.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from zps.codecs.base import Encoded, feedback_view, flat, out_view, require_finite
from zps.codecs.blocks import group_size, row_groups
from zps.codecs.spec import DEFAULT_BLOCK, block_param, check_block

INT8_MAX = 127


class Int8Codec:
    """8 bits a value: ``q = floor(x / s + u)``, ``u ~ U[0, 1)``, ``s ~= max|x| / 127`` per
    block. Stochastic rounding makes it unbiased (E[s * q] = x); error <= s per value.

    ``s`` is rounded down where needed so that ``127 * s <= max|x|``: a decoded value never
    exceeds its block's largest, so nothing overflows near float32's limit.
    """

    name = "int8"
    lossless = False

    def __init__(self, block: int = DEFAULT_BLOCK, seed: int | None = None) -> None:
        self.block = check_block(block)
        self.seed = seed
        self._rng: np.random.Generator | None = None  # made on first encode: decoders need none

    def encode(self, xp: ModuleType, array: Any) -> Encoded:
        """``array`` quantized; ``ValueError`` if it holds NaN or inf."""
        return self._encode(xp, array, flat(array), feedback=False)

    def encode_feedback(self, xp: ModuleType, buf: Any) -> Encoded:
        """As ``encode`` (the same random draws); ``buf`` is left holding ``buf - s * q``."""
        return self._encode(xp, buf, feedback_view(buf), feedback=True)

    def _encode(self, xp: ModuleType, array: Any, values: Any, feedback: bool) -> Encoded:
        scales = _int8_scales(xp, values, self.block)
        q = xp.empty(values.size, xp.int8)
        for first, rows in row_groups(values, self.block):
            s = scales[first:first + rows.shape[0], None].astype(values.dtype)
            steps = rows / xp.where(s > 0, s, 1)
            steps += self._uniform(xp, rows.shape)
            xp.floor(steps, out=steps)
            xp.clip(steps, -INT8_MAX, INT8_MAX, out=steps)
            sent = q[first * self.block:first * self.block + rows.size].reshape(rows.shape)
            sent[...] = steps
            if feedback:  # what decode_add adds, bit for bit: float(q) * float(s)
                rows -= xp.multiply(sent, s, out=steps)
        return Encoded(self.name, tuple(array.shape), str(array.dtype), (q, scales),
                       {"block": self.block})

    def _uniform(self, xp: ModuleType, shape: tuple[int, ...]) -> Any:
        if xp is not np:
            return xp.random.random(shape, dtype=xp.float32)  # cupy: on the device
        if self._rng is None:
            self._rng = np.random.default_rng(self.seed)
        return self._rng.random(shape, dtype=np.float32)

    def part_specs(self, size: int, dtype: str,
                   params: dict[str, Any]) -> list[tuple[str, int]]:
        return [("int8", size), ("float32", _block_count(size, block_param(params)))]

    def decode_add(self, encoded: Encoded, out: np.ndarray, scale: float = 1.0) -> None:
        q, scales = (np.asarray(p) for p in encoded.parts)
        block = block_param(encoded.params)
        target, factor = out_view(out), out.dtype.type(scale)
        scratch = np.empty(group_size(target.size, block), out.dtype)
        for first, rows in row_groups(target, block):
            start = first * block
            value = scratch[:rows.size].reshape(rows.shape)
            np.multiply(q[start:start + rows.size].reshape(rows.shape),
                        scales[first:first + rows.shape[0], None].astype(out.dtype), out=value)
            if factor != 1:
                value *= factor
            rows += value


class SignCodec:
    """1 bit a value plus a scale per block (the mean |x|): signSGD / 1-bit SGD. Biased:
    use it with error feedback. The mean is summed in float64: in float32 a block of
    values near float32's limit would sum to inf."""

    name = "sign"
    lossless = False

    def __init__(self, block: int = DEFAULT_BLOCK) -> None:
        self.block = check_block(block)

    def encode(self, xp: ModuleType, array: Any) -> Encoded:
        """The signs of ``array`` and its block means; ``ValueError`` for NaN or inf."""
        return self._encode(xp, array, flat(array), feedback=False)

    def encode_feedback(self, xp: ModuleType, buf: Any) -> Encoded:
        """As ``encode``; ``buf`` is left holding ``buf - s * sign(buf)``."""
        return self._encode(xp, buf, feedback_view(buf), feedback=True)

    def _encode(self, xp: ModuleType, array: Any, values: Any, feedback: bool) -> Encoded:
        scales = _sign_scales(xp, values, self.block)
        bits = xp.empty(-(-values.size // 8), xp.uint8)
        for first, rows in row_groups(values, self.block):
            positive = rows >= 0
            start = first * self.block // 8  # blocks are whole bytes
            bits[start:start + -(-rows.size // 8)] = xp.packbits(positive.reshape(-1))
            if feedback:  # what decode_add adds, the way it does, so bit for bit: +s or -s
                sent = positive.astype(values.dtype)
                sent *= 2
                sent -= 1
                sent *= scales[first:first + rows.shape[0], None].astype(values.dtype)
                rows -= sent
        return Encoded(self.name, tuple(array.shape), str(array.dtype), (bits, scales),
                       {"block": self.block})

    def part_specs(self, size: int, dtype: str,
                   params: dict[str, Any]) -> list[tuple[str, int]]:
        return [("uint8", -(-size // 8)), ("float32", _block_count(size, block_param(params)))]

    def decode_add(self, encoded: Encoded, out: np.ndarray, scale: float = 1.0) -> None:
        bits, scales = (np.asarray(p) for p in encoded.parts)
        block = block_param(encoded.params)
        target, factor = out_view(out), out.dtype.type(scale)
        scratch = np.empty(group_size(target.size, block), out.dtype)
        for first, rows in row_groups(target, block):
            start = first * block
            value = scratch[:rows.size].reshape(rows.shape)
            packed = bits[start // 8:start // 8 + -(-rows.size // 8)]
            value.reshape(-1)[...] = np.unpackbits(packed, count=rows.size)
            value *= 2
            value -= 1  # now +1 or -1
            value *= scales[first:first + rows.shape[0], None].astype(out.dtype)
            if factor != 1:
                value *= factor
            rows += value


def _block_count(size: int, block: int) -> int:
    return -(-size // block)


def _int8_scales(xp: ModuleType, values: Any, block: int) -> Any:
    """Per block, ``s`` with ``127 * s <= max|x|`` (as close as float32 allows), float32."""
    groups = list(row_groups(values, block))
    if not groups:
        return xp.zeros(0, xp.float32)
    # One row group's |x| at a time; NaN and inf propagate into the maxima.
    top = xp.concatenate([xp.abs(rows).max(axis=1) for _, rows in groups])
    top = top.astype(np.promote_types(top.dtype, np.float32))  # fp16 input: exact scales
    scales = _checked_scales(xp, values, top / INT8_MAX)
    # s = fl(m / 127) is within half an ulp of m / 127, so one ulp down always brings
    # 127 * s back under m (where rounding had put it above m, or past float32's limit).
    with np.errstate(over="ignore"):
        over = scales.astype(top.dtype) * INT8_MAX > top
    return xp.where(over, xp.nextafter(scales, xp.float32(0)), scales)


def _sign_scales(xp: ModuleType, values: Any, block: int) -> Any:
    """Per block, the mean |x| as float32, summed in float64 (it is <= max|x|: finite)."""
    means = [xp.abs(rows).sum(axis=1, dtype=xp.float64) / rows.shape[1]
             for _, rows in row_groups(values, block)]
    return _checked_scales(xp, values, xp.concatenate(means) if means
                           else xp.zeros(0, xp.float64))


def _checked_scales(xp: ModuleType, values: Any, scales: Any) -> Any:
    """``scales`` as float32, or ``ValueError``: NaN or inf in ``values`` reach the scales,
    as do float64 values too large for a float32 scale."""
    with np.errstate(over="ignore", invalid="ignore"):
        scales32 = scales.astype(xp.float32)
    if bool(xp.isfinite(scales32).all()):
        return scales32
    require_finite(xp, values)  # NaN or inf in the values: say that
    raise ValueError("the update holds values beyond float32's range; int8 and sign scales "
                     "are float32 and cannot encode it")
