"""``topk``: only the k largest-magnitude values travel, with their indices."""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np

from zps.codecs.base import Encoded, flat, require_finite
from zps.errors import ProtocolError

DEFAULT_RATIO = 0.01


class TopKCodec:
    """Keep ``k = ceil(ratio * n)`` values (at least one of a non-empty tensor): int32
    indices (sorted, distinct) and the values themselves. Biased: use error feedback."""

    name = "topk"
    lossless = False

    def __init__(self, ratio: float = DEFAULT_RATIO) -> None:
        if not 0 < ratio <= 1:
            raise ValueError("topk ratio must be in (0, 1]")
        self.ratio = ratio

    def k_for(self, size: int) -> int:
        return min(size, max(1, math.ceil(self.ratio * size))) if size else 0

    def encode(self, xp: ModuleType, array: Any) -> Encoded:
        require_finite(xp, array)
        values = flat(array)
        k = self.k_for(values.size)
        if k == values.size:
            idx = xp.arange(values.size)
        else:
            idx = xp.sort(xp.argpartition(xp.abs(values), values.size - k)[values.size - k:])
        return Encoded(self.name, tuple(array.shape), str(array.dtype),
                       (idx.astype(xp.int32), values[idx]), {"k": k})

    def part_specs(self, size: int, dtype: str,
                   params: dict[str, Any]) -> list[tuple[str, int]]:
        k = params.get("k")
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= size:
            raise ProtocolError("bad_header", f"topk k must be an integer in [0, {size}]")
        return [("int32", k), (dtype, k)]

    def check(self, encoded: Encoded) -> None:
        """Indices in range, sorted and distinct (else ``ProtocolError``)."""
        idx = np.asarray(encoded.parts[0])
        if idx.size and (idx.min() < 0 or idx.max() >= encoded.size):
            raise ProtocolError("bad_frames", f"topk index out of range [0, {encoded.size})")
        if idx.size > 1 and not bool((idx[1:] > idx[:-1]).all()):
            raise ProtocolError("bad_frames", "topk indices must be sorted and distinct")

    def decode_add(self, encoded: Encoded, out: np.ndarray, scale: float = 1.0) -> None:
        self.check(encoded)
        idx, values = (np.asarray(p) for p in encoded.parts)
        target = out.reshape(-1)
        target[idx] += values if scale == 1.0 else values * scale
