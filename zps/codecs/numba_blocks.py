"""Compiled int8 and sign kernels (numba): each block is read, quantized and its residual
written while it sits in cache, instead of one NumPy pass over the tensor per operation.

Every kernel does the float operations of the NumPy code in ``quantized.py``, in the same
order and dtype (``T``, the dense dtype: float32 or float64), so both give the same bits;
``tests/test_kernels.py`` checks it. Nothing here checks its input. The callers pass
C-contiguous arrays of the right sizes (where there is nothing to add, ``add=False`` and
any ``d`` of the same type: one signature instead of two), and start an error-feedback
kernel only once ``absmax`` has shown that no block can be refused, so a refused update
never leaves a buffer half written. Arrays a kernel only reads come ``frozen`` (read-only
views): numba compiles a signature per writability, and values from the wire are read-only.
Imported only by ``zps.codecs.kernels``, which falls back to the NumPy code if numba is
missing or fails.

``spare`` is a one-element unsigned array as wide as ``T`` and ``mask`` clears a sign bit:
the largest ``|x|`` of a block is the largest of its bit patterns without the sign (an
integer maximum, which vectorizes where a float one does not).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

jit = njit(cache=True, nogil=True)
INT8_MAX = 127


@jit
def absmax(x: Any, spare: Any, mask: Any) -> Any:
    """The largest ``|x|`` (0 if empty), as ``T``: inf if ``x`` holds inf, NaN if NaN."""
    bits = x.view(spare.dtype)
    top = mask ^ mask
    for i in range(bits.size):
        v = bits[i] & mask
        top = v if v > top else top
    spare[0] = top
    return spare.view(x.dtype)[0]


@jit
def saturated_add(r: Any, d: Any) -> None:
    """``r = clip(r + d)`` to the finite range, as ``ErrorFeedback`` accumulates."""
    limit = np.finfo(r.dtype).max
    for i in range(r.size):
        r[i] = min(max(r[i] + d[i], -limit), limit)


@jit
def int8_scale(xb: Any, spare: Any, mask: Any) -> Any:
    """``_int8_scales`` for one block: float32 ``s ~= max|x| / 127``, ``127 * s <= max|x|``."""
    t = xb.dtype.type
    top = absmax(xb, spare, mask)
    s = np.float32(top / t(INT8_MAX))
    if t(s) * t(INT8_MAX) > top:
        s = np.nextafter(s, np.float32(0))
    return s


@jit
def _int8_nearest(rb: Any, qb: Any, spare: Any, mask: Any) -> Any:
    """One error-feedback block: ``q = clip(rint(r / s))``, then ``r -= q * s``."""
    t = rb.dtype.type
    s32 = int8_scale(rb, spare, mask)
    s = t(s32)
    div = s if s > 0 else t(1)
    for i in range(rb.size):
        y = min(max(np.rint(rb[i] / div), t(-INT8_MAX)), t(INT8_MAX))
        qb[i] = np.int8(y)
        rb[i] = rb[i] - t(qb[i]) * s
    return s32


@jit
def int8_feedback(r: Any, d: Any, add: bool, q: Any, scales: Any, block: int, spare: Any,
                  mask: Any) -> None:
    """``r`` (plus ``d``, saturated, if ``add``) quantized into ``q`` and ``scales``,
    rounding to nearest (ties to even); ``r`` is left holding the error."""
    for b in range(scales.size):
        lo = b * block
        hi = min(lo + block, r.size)
        if add:
            saturated_add(r[lo:hi], d[lo:hi])
        scales[b] = _int8_nearest(r[lo:hi], q[lo:hi], spare, mask)


@jit
def int8_random(x: Any, u: Any, q: Any, scales: Any, block: int, spare: Any,
                mask: Any) -> None:
    """``q = clip(floor(x / s + u))`` block by block, ``u`` float32 draws in ``[0, 1)``
    (one per value, as the NumPy code adds them)."""
    t = x.dtype.type
    for b in range(scales.size):
        lo = b * block
        hi = min(lo + block, x.size)
        xb, ub, qb = x[lo:hi], u[lo:hi], q[lo:hi]
        s32 = int8_scale(xb, spare, mask)
        scales[b] = s32
        s = t(s32)
        div = s if s > 0 else t(1)
        for i in range(xb.size):
            y = np.floor(xb[i] / div + t(ub[i]))
            qb[i] = np.int8(min(max(y, t(-INT8_MAX)), t(INT8_MAX)))


@jit
def int8_decode_add(q: Any, scales: Any, out: Any, block: int, factor: Any) -> None:
    """``out += factor * (q * s)`` block by block, each product rounded to ``out``'s dtype."""
    t = out.dtype.type
    for b in range(scales.size):
        lo = b * block
        hi = min(lo + block, out.size)
        qb, ob = q[lo:hi], out[lo:hi]
        s = t(scales[b])
        if factor != 1:
            for i in range(ob.size):
                ob[i] = ob[i] + (t(qb[i]) * s) * factor
        else:
            for i in range(ob.size):
                ob[i] = ob[i] + t(qb[i]) * s


@jit
def sign_mean(xb: Any) -> Any:
    """The block's mean ``|x|`` in float64, summed as ``_lane_sums`` does: value ``i`` into
    running sum ``i % 8``, in order, then the eight sums pairwise."""
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = 0.0
    whole = xb.size // 8 * 8
    for j in range(0, whole, 8):
        a0 += abs(np.float64(xb[j]))
        a1 += abs(np.float64(xb[j + 1]))
        a2 += abs(np.float64(xb[j + 2]))
        a3 += abs(np.float64(xb[j + 3]))
        a4 += abs(np.float64(xb[j + 4]))
        a5 += abs(np.float64(xb[j + 5]))
        a6 += abs(np.float64(xb[j + 6]))
        a7 += abs(np.float64(xb[j + 7]))
    rest = xb.size - whole  # a partial last block: the missing values count as +0
    a0 += abs(np.float64(xb[whole])) if rest > 0 else 0.0
    a1 += abs(np.float64(xb[whole + 1])) if rest > 1 else 0.0
    a2 += abs(np.float64(xb[whole + 2])) if rest > 2 else 0.0
    a3 += abs(np.float64(xb[whole + 3])) if rest > 3 else 0.0
    a4 += abs(np.float64(xb[whole + 4])) if rest > 4 else 0.0
    a5 += abs(np.float64(xb[whole + 5])) if rest > 5 else 0.0
    a6 += abs(np.float64(xb[whole + 6])) if rest > 6 else 0.0
    return (((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))) / xb.size


@jit
def _sign_pack(xb: Any, packed: Any) -> None:
    """``packbits(xb >= 0)``: the first value in the highest bit, a last byte zero-padded."""
    whole = xb.size // 8
    for j in range(whole):
        byte = 0
        for bit in range(8):
            byte |= (1 << (7 - bit)) if xb[8 * j + bit] >= 0 else 0
        packed[j] = byte
    if whole < packed.size:
        byte = 0
        for i in range(whole * 8, xb.size):
            byte |= (1 << (7 - (i - whole * 8))) if xb[i] >= 0 else 0
        packed[whole] = byte


@jit
def sign_encode(x: Any, bits: Any, scales: Any, block: int) -> int:
    """Signs and block means of ``x``; the first block whose float32 mean is not finite
    (NaN or inf in it, or float64 values too large), or -1 when there is none."""
    for b in range(scales.size):
        lo = b * block
        hi = min(lo + block, x.size)
        s = np.float32(sign_mean(x[lo:hi]))
        if not np.isfinite(s):
            return b
        scales[b] = s
        _sign_pack(x[lo:hi], bits[lo // 8:(hi + 7) // 8])
    return -1


@jit
def sign_feedback(r: Any, d: Any, add: bool, bits: Any, scales: Any, block: int) -> None:
    """``r`` (plus ``d``, saturated, if ``add``) as signs and block means; ``r`` is left
    holding ``r - (+-s)``."""
    t = r.dtype.type
    for b in range(scales.size):
        lo = b * block
        hi = min(lo + block, r.size)
        rb = r[lo:hi]
        if add:
            saturated_add(rb, d[lo:hi])
        s32 = np.float32(sign_mean(rb))
        scales[b] = s32
        _sign_pack(rb, bits[lo // 8:(hi + 7) // 8])
        s = t(s32)
        for i in range(rb.size):
            rb[i] = rb[i] - (s if rb[i] >= 0 else -s)


@jit
def sign_decode_add(bits: Any, scales: Any, out: Any, block: int, factor: Any) -> None:
    """``out += factor * (+-s)`` block by block, each product rounded to ``out``'s dtype
    (``(-s) * f`` is ``-(s * f)``: rounding is symmetric)."""
    t = out.dtype.type
    for b in range(scales.size):
        lo = b * block
        hi = min(lo + block, out.size)
        ob, packed = out[lo:hi], bits[lo // 8:(hi + 7) // 8]
        plus = t(scales[b]) * factor if factor != 1 else t(scales[b])
        minus = -plus
        whole = ob.size // 8
        for j in range(whole):
            byte = packed[j]
            for bit in range(8):
                at = 8 * j + bit
                ob[at] = ob[at] + (plus if (byte << bit) & 128 else minus)
        for at in range(whole * 8, ob.size):
            ob[at] = ob[at] + (plus if (packed[whole] << (at - whole * 8)) & 128 else minus)
