"""Block-scaled quantization: ``int8`` (8 bits a value) and ``sign`` (1 bit a value).

Both cut the tensor into blocks of ``block`` values (default 256), each with its own float32
scale, so one large value does not flatten the precision of the whole tensor. The code here
works on any array module: two passes over the values, a row group of blocks at a time, the
first finding the scales (and refusing NaN or inf before anything is written), the second
quantizing and, for error feedback, leaving ``x - decode(x)`` in the caller's buffer. For
NumPy float arrays the compiled kernels (``numba_blocks``) do the same in one pass a block,
to the same bits.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, NoReturn

import numpy as np

from zps.codecs.base import (
    Encoded,
    accumulate,
    feedback_inputs,
    flat,
    out_view,
    require_finite,
)
from zps.codecs.blocks import group_size, row_groups
from zps.codecs.kernels import absmax, bit_args, compiled, feedback_kernels, frozen
from zps.codecs.spec import DEFAULT_BLOCK, block_param, check_block

INT8_MAX = 127
F32_MAX = np.finfo(np.float32).max


class Int8Codec:
    """8 bits a value, ``s ~= max|x| / 127`` per block. ``encode`` rounds stochastically,
    ``q = floor(x / s + u)``, ``u ~ U[0, 1)``: unbiased (E[s * q] = x), error <= s per value.
    ``encode_feedback`` rounds to nearest (ties to even), ``q = rint(x / s)``: error <= s / 2,
    and the error is kept for the next push, so nothing is lost over time.

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
        values = flat(array)
        kernels = compiled(xp, values)
        if kernels is not None:
            return self._encode_compiled(kernels, array, values)
        return self._encode(xp, array, values, feedback=False)

    def encode_feedback(self, xp: ModuleType, buf: Any, delta: Any = None) -> Encoded:
        """``buf`` (plus ``delta``) quantized, rounding to nearest; ``buf`` is left holding
        ``buf - s * q`` (see ``FeedbackCodec``)."""
        values, delta = feedback_inputs(buf, delta)
        kernels = feedback_kernels(xp, values, delta, _int8_fits)
        if kernels is not None:
            q, scales = np.empty(values.size, np.int8), self._scales(values.size)
            kernels.int8_feedback(values, frozen(values if delta is None else delta),
                                  delta is not None, q, scales, self.block,
                                  *bit_args(values.dtype))
            return self._encoded(buf, q, scales)
        if delta is not None:
            accumulate(xp, values, delta)
        return self._encode(xp, buf, values, feedback=True)

    def _encode(self, xp: ModuleType, array: Any, values: Any, feedback: bool) -> Encoded:
        scales = _int8_scales(xp, values, self.block)
        q = xp.empty(values.size, xp.int8)
        for first, rows in row_groups(values, self.block):
            s = scales[first:first + rows.shape[0], None].astype(values.dtype)
            steps = rows / xp.where(s > 0, s, 1)
            if feedback:
                xp.rint(steps, out=steps)
            else:
                steps += self._uniform(xp, rows.shape)
                xp.floor(steps, out=steps)
            xp.clip(steps, -INT8_MAX, INT8_MAX, out=steps)
            sent = q[first * self.block:first * self.block + rows.size].reshape(rows.shape)
            sent[...] = steps
            if feedback:  # what decode_add adds, bit for bit: float(q) * float(s)
                rows -= xp.multiply(sent, s, out=steps)
        return self._encoded(array, q, scales)

    def _encode_compiled(self, kernels: Any, array: Any, values: np.ndarray) -> Encoded:
        """``_encode`` without feedback, a row group at a time with the same draws."""
        if not _int8_fits(absmax(kernels, values)):
            _refuse(np, values)  # before any draw, as _int8_scales refuses
        q, scales = np.empty(values.size, np.int8), self._scales(values.size)
        draws = np.empty(group_size(values.size, self.block), np.float32)
        spare, mask = bit_args(values.dtype)
        for first, rows in row_groups(values, self.block):
            start, stop = first * self.block, first * self.block + rows.size
            u = self._generator().random(dtype=np.float32, out=draws[:rows.size])
            kernels.int8_random(frozen(values[start:stop]), frozen(u), q[start:stop],
                                scales[first:first + rows.shape[0]], self.block, spare, mask)
        return self._encoded(array, q, scales)

    def _uniform(self, xp: ModuleType, shape: tuple[int, ...]) -> Any:
        if xp is not np:
            return xp.random.random(shape, dtype=xp.float32)  # cupy: on the device
        return self._generator().random(shape, dtype=np.float32)

    def _generator(self) -> np.random.Generator:
        if self._rng is None:
            self._rng = np.random.default_rng(self.seed)
        return self._rng

    def _scales(self, size: int) -> np.ndarray:
        return np.empty(_block_count(size, self.block), np.float32)

    def _encoded(self, array: Any, q: Any, scales: Any) -> Encoded:
        return Encoded(self.name, tuple(array.shape), str(array.dtype), (q, scales),
                       {"block": self.block})

    def part_specs(self, size: int, dtype: str,
                   params: dict[str, Any]) -> list[tuple[str, int]]:
        return [("int8", size), ("float32", _block_count(size, block_param(params)))]

    def decode_add(self, encoded: Encoded, out: np.ndarray, scale: float = 1.0) -> None:
        q, scales = (np.asarray(p) for p in encoded.parts)
        block = block_param(encoded.params)
        target, factor = out_view(out), out.dtype.type(scale)
        kernels = compiled(np, target)
        if kernels is not None and _fits(q, np.int8, target.size) and _fits(
                scales, np.float32, _block_count(target.size, block)):
            kernels.int8_decode_add(frozen(q), frozen(scales), target, block, factor)
            return
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
    use it with error feedback. The mean is summed in float64 (in float32 a block of values
    near float32's limit would sum to inf), in a fixed order (see ``_lane_sums``)."""

    name = "sign"
    lossless = False

    def __init__(self, block: int = DEFAULT_BLOCK) -> None:
        self.block = check_block(block)

    def encode(self, xp: ModuleType, array: Any) -> Encoded:
        """The signs of ``array`` and its block means; ``ValueError`` for NaN or inf."""
        values = flat(array)
        kernels = compiled(xp, values)
        if kernels is None:
            return self._encode(xp, array, values, feedback=False)
        bits, scales = self._parts(values.size)
        if kernels.sign_encode(frozen(values), bits, scales, self.block) >= 0:
            _refuse(np, values)  # a block mean is not finite: nothing of the caller's written
        return self._encoded(array, bits, scales)

    def encode_feedback(self, xp: ModuleType, buf: Any, delta: Any = None) -> Encoded:
        """As ``encode`` (of ``buf`` plus ``delta``); ``buf`` is left holding
        ``buf - s * sign(buf)`` (see ``FeedbackCodec``)."""
        values, delta = feedback_inputs(buf, delta)
        kernels = feedback_kernels(xp, values, delta, _sign_fits)
        if kernels is not None:
            bits, scales = self._parts(values.size)
            kernels.sign_feedback(values, frozen(values if delta is None else delta),
                                  delta is not None, bits, scales, self.block)
            return self._encoded(buf, bits, scales)
        if delta is not None:
            accumulate(xp, values, delta)
        return self._encode(xp, buf, values, feedback=True)

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
        return self._encoded(array, bits, scales)

    def _parts(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        return (np.empty(-(-size // 8), np.uint8),
                np.empty(_block_count(size, self.block), np.float32))

    def _encoded(self, array: Any, bits: Any, scales: Any) -> Encoded:
        return Encoded(self.name, tuple(array.shape), str(array.dtype), (bits, scales),
                       {"block": self.block})

    def part_specs(self, size: int, dtype: str,
                   params: dict[str, Any]) -> list[tuple[str, int]]:
        return [("uint8", -(-size // 8)), ("float32", _block_count(size, block_param(params)))]

    def decode_add(self, encoded: Encoded, out: np.ndarray, scale: float = 1.0) -> None:
        bits, scales = (np.asarray(p) for p in encoded.parts)
        block = block_param(encoded.params)
        target, factor = out_view(out), out.dtype.type(scale)
        kernels = compiled(np, target)
        if kernels is not None and _fits(bits, np.uint8, -(-target.size // 8)) and _fits(
                scales, np.float32, _block_count(target.size, block)):
            kernels.sign_decode_add(frozen(bits), frozen(scales), target, block, factor)
            return
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


def _fits(part: np.ndarray, dtype: type, size: int) -> bool:
    """Whether a received part is what a kernel may index blindly."""
    return (part.ndim == 1 and part.dtype == dtype and part.size == size
            and part.flags.c_contiguous)


def _int8_fits(top: Any) -> bool:
    """Whether a block whose largest ``|x|`` is ``top`` gets a finite float32 scale."""
    with np.errstate(over="ignore"):
        return bool(np.isfinite(top)) and bool(np.isfinite(np.float32(top / INT8_MAX)))


def _sign_fits(top: Any) -> bool:
    """Whether every block mean is finite in float32 when no ``|x|`` exceeds ``top``."""
    return bool(top <= F32_MAX)


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
    means = [_lane_sums(xp, rows) / rows.shape[1] for _, rows in row_groups(values, block)]
    return _checked_scales(xp, values, xp.concatenate(means) if means
                           else xp.zeros(0, xp.float64))


LANES = 8


def _lane_sums(xp: ModuleType, rows: Any) -> Any:
    """Per row, the sum of ``|x|`` in float64 in one fixed order, the kernels' too: value
    ``i`` into running sum ``i % 8`` in order (a sum along a middle axis adds row after row),
    then the eight sums pairwise. A short last row is padded with zeros, which add nothing."""
    width = -(-rows.shape[1] // LANES) * LANES
    lanes = xp.zeros((rows.shape[0], width), xp.float64)
    xp.abs(rows, out=lanes[:, :rows.shape[1]])
    sums = lanes.reshape(rows.shape[0], width // LANES, LANES).sum(axis=1)
    pairs = sums[:, 0::2] + sums[:, 1::2]
    quads = pairs[:, 0::2] + pairs[:, 1::2]
    return quads[:, 0] + quads[:, 1]


def _checked_scales(xp: ModuleType, values: Any, scales: Any) -> Any:
    """``scales`` as float32, or ``ValueError``: NaN or inf in ``values`` reach the scales,
    as do float64 values too large for a float32 scale."""
    with np.errstate(over="ignore", invalid="ignore"):
        scales32 = scales.astype(xp.float32)
    if bool(xp.isfinite(scales32).all()):
        return scales32
    _refuse(xp, values)


def _refuse(xp: ModuleType, values: Any) -> NoReturn:
    """The ``ValueError`` for values whose scales are not finite."""
    require_finite(xp, values)  # NaN or inf in the values: say that
    raise ValueError("the update holds values beyond float32's range; int8 and sign scales "
                     "are float32 and cannot encode it")
