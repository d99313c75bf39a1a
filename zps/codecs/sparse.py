"""``topk``: only the k largest-magnitude values travel, with their indices."""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np

from zps.codecs.base import (
    Encoded,
    accumulate,
    feedback_inputs,
    flat,
    out_view,
    require_finite,
)
from zps.codecs.errors import CodecError
from zps.codecs.kernels import bit_args, compiled, feedback_kernels, frozen
from zps.codecs.spec import DEFAULT_RATIO, check_ratio, k_param

# Indices travel as int32.
MAX_SIZE = np.iinfo(np.int32).max
# Values the kernels sample to choose what to gather, and the size up to which they gather
# every value instead.
SAMPLES = 1 << 15
SMALL = 4 * SAMPLES


def top_indices(xp: ModuleType, values: Any, k: int) -> Any:
    """The sorted int32 indices of the ``k`` largest ``|values|``; of equal magnitudes at
    the cut, the lowest indices (the kernels select the same)."""
    if k == values.size:
        return xp.arange(values.size, dtype=xp.int32)
    size = values.size
    magnitudes = xp.abs(values)
    cut = xp.partition(magnitudes, size - k)[size - k]  # the k-th largest
    above = xp.flatnonzero(magnitudes > cut)
    ties = xp.flatnonzero(magnitudes == cut)[:k - above.size]
    return xp.sort(xp.concatenate((above, ties))).astype(xp.int32)


def _top_compiled(kernels: Any, values: np.ndarray, delta: np.ndarray | None, k: int,
                  residual: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
    """``top_indices`` and the values there, by the kernels (``numba_topk``), for
    ``0 < k < values.size``; with ``delta``, ``values += delta`` (saturated) on the way,
    and the sent values zeroed in ``residual``. ``ValueError`` if ``values`` holds NaN or
    inf (then only without ``delta``); None if the sample misled, for the NumPy code to
    select (from the sum, which is made by then)."""
    size = values.size
    spare, mask = bit_args(values.dtype)
    unsigned = mask.dtype.type
    if size <= SMALL:
        floor, cap = unsigned(0), size  # gather every value
    else:
        expected = SAMPLES * k / size
        rank = min(SAMPLES, math.ceil(1.2 * expected + 4 * math.sqrt(expected) + 8))
        sample = np.empty(SAMPLES, unsigned)
        kernels.sample_keys(frozen(values), frozen(values if delta is None else delta),
                            delta is not None, sample, spare, mask)
        floor = np.partition(sample, SAMPLES - rank)[SAMPLES - rank]
        cap = min(size, 2 * (size // SAMPLES) * rank + 1024)
    bad = np.array(np.inf, values.dtype).view(unsigned)[()]
    floor = min(floor, unsigned(bad - 1))  # inf and NaN are always above it
    room = min(size, cap + k)
    found, keys = np.empty(room, np.int64), np.empty(room, unsigned)
    gathered = np.empty(room, values.dtype)
    if delta is None:
        above, equal, stored = kernels.gather(frozen(values), floor, cap, k, found, keys,
                                              gathered, bad, mask)
    else:
        above, equal, stored = kernels.gather_sum(values, frozen(delta), floor, cap, k,
                                                  found, keys, gathered, bad, mask)
    if above < 0:
        require_finite(np, values)  # says NaN or inf
    if above > cap or above + equal < k:
        return None
    cut, need = floor, k - above  # too few above the floor: all of them, then ties
    if above >= k:
        over = keys[:stored][keys[:stored] > floor]
        cut = np.partition(over, above - k)[above - k]
        need = k - int(np.count_nonzero(over > cut))
    idx, sent = np.empty(k, np.int32), np.empty(k, values.dtype)
    kernels.select(found, keys, gathered, stored, cut, need, idx, sent,
                   sent if residual is None else residual, residual is not None)
    return idx, sent


class TopKCodec:
    """Keep ``k = ceil(ratio * n)`` values (at least one of a non-empty tensor): int32
    indices (sorted, distinct) and the values themselves. Biased: use error feedback."""

    name = "topk"
    lossless = False

    def __init__(self, ratio: float = DEFAULT_RATIO) -> None:
        self.ratio = check_ratio(ratio)

    def k_for(self, size: int) -> int:
        """How many of ``size`` values travel."""
        return min(size, max(1, math.ceil(self.ratio * size))) if size else 0

    def encode(self, xp: ModuleType, array: Any) -> Encoded:
        """The largest values of ``array`` and where they are (ties: the lowest indices);
        ``ValueError`` for NaN or inf, or a tensor too large for int32 indices."""
        values = flat(array)
        kernels = compiled(xp, values)
        if kernels is not None and 0 < self.k_for(values.size) < values.size <= MAX_SIZE:
            found = _top_compiled(kernels, values, None, self.k_for(values.size), None)
            if found is not None:
                return self._encoded(array, *found)
        return self._encode(xp, array, values)

    def encode_feedback(self, xp: ModuleType, buf: Any, delta: Any = None) -> Encoded:
        """As ``encode`` (of ``buf`` plus ``delta``); ``buf`` is left holding itself with
        the sent values zeroed (see ``FeedbackCodec``)."""
        values, delta = feedback_inputs(buf, delta)
        kernels = feedback_kernels(xp, values, delta, lambda bound: True)
        if kernels is not None and 0 < self.k_for(values.size) < values.size <= MAX_SIZE:
            found = _top_compiled(kernels, values, delta, self.k_for(values.size), values)
            if found is not None:
                return self._encoded(buf, *found)
            delta = None  # the kernel added it: the NumPy code goes on from the sum
        if delta is not None:
            accumulate(xp, values, delta)
        encoded = self._encode(xp, buf, values)
        values[encoded.parts[0]] = 0  # the sent values were copied out by the encode
        return encoded

    def _encode(self, xp: ModuleType, array: Any, values: Any) -> Encoded:
        require_finite(xp, array)
        if values.size > MAX_SIZE:
            raise ValueError(f"topk encodes tensors of at most {MAX_SIZE} values (int32 "
                             f"indices), got {values.size}")
        idx = top_indices(xp, values, self.k_for(values.size))
        return self._encoded(array, idx, values[idx])

    def _encoded(self, array: Any, idx: Any, sent: Any) -> Encoded:
        return Encoded(self.name, tuple(array.shape), str(array.dtype), (idx, sent),
                       {"k": int(idx.size)})

    def part_specs(self, size: int, dtype: str,
                   params: dict[str, Any]) -> list[tuple[str, int]]:
        k = k_param(params, size)
        return [("int32", k), (dtype, k)]

    def check(self, encoded: Encoded) -> None:
        """Indices in range, sorted and distinct (else ``CodecError``, ``bad_frames``)."""
        idx = np.asarray(encoded.parts[0])
        if idx.size and (idx.min() < 0 or idx.max() >= encoded.size):
            raise CodecError("bad_frames", f"topk index out of range [0, {encoded.size})")
        if idx.size > 1 and not bool((idx[1:] > idx[:-1]).all()):
            raise CodecError("bad_frames", "topk indices must be sorted and distinct")

    def decode_add(self, encoded: Encoded, out: np.ndarray, scale: float = 1.0) -> None:
        self.check(encoded)
        idx, values = (np.asarray(p) for p in encoded.parts)
        factor = out.dtype.type(scale)
        target = out_view(out)
        # Temporaries of k values: the size of the message, not of the table.
        target[idx] += values if factor == 1 else np.multiply(values, factor, dtype=out.dtype)
