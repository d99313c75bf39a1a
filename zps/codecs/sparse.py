"""``topk``: only the k largest-magnitude values travel, with their indices."""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np

from zps.codecs.base import Encoded, feedback_view, flat, out_view, require_finite
from zps.codecs.errors import CodecError
from zps.codecs.spec import DEFAULT_RATIO, check_ratio, k_param

# Indices travel as int32.
MAX_SIZE = np.iinfo(np.int32).max


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
        """The largest values of ``array`` and where they are; ``ValueError`` for NaN or
        inf, or a tensor too large for int32 indices."""
        return self._encode(xp, array, flat(array))

    def encode_feedback(self, xp: ModuleType, buf: Any) -> Encoded:
        """As ``encode``; ``buf`` is left holding itself with the sent values zeroed."""
        values = feedback_view(buf)
        encoded = self._encode(xp, buf, values)
        values[encoded.parts[0]] = 0  # the sent values were copied out by the encode
        return encoded

    def _encode(self, xp: ModuleType, array: Any, values: Any) -> Encoded:
        require_finite(xp, array)
        if values.size > MAX_SIZE:
            raise ValueError(f"topk encodes tensors of at most {MAX_SIZE} values (int32 "
                             f"indices), got {values.size}")
        k = self.k_for(values.size)
        if k == values.size:
            idx = xp.arange(values.size, dtype=xp.int32)
        else:
            top = xp.argpartition(xp.abs(values), values.size - k)[values.size - k:]
            idx = xp.sort(top).astype(xp.int32)
        return Encoded(self.name, tuple(array.shape), str(array.dtype), (idx, values[idx]),
                       {"k": k})

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
