"""Codecs with no blocks: ``none`` (raw values) and ``fp16`` (half precision)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from zps.codecs.base import DECODE_BLOCK, Encoded, flat, require_finite

FP16_MAX = float(np.finfo(np.float16).max)


class NoCodec:
    """The values as they are: lossless."""

    name = "none"
    lossless = True

    def encode(self, xp: ModuleType, array: Any) -> Encoded:
        return Encoded(self.name, tuple(array.shape), str(array.dtype), (flat(array),))

    def part_specs(self, size: int, dtype: str,
                   params: dict[str, Any]) -> list[tuple[str, int]]:
        return [(dtype, size)]

    def decode_add(self, encoded: Encoded, out: np.ndarray, scale: float = 1.0) -> None:
        _add_blocks(np.asarray(encoded.parts[0]), out.reshape(-1), scale)


class Fp16Codec:
    """Half precision: 2 bytes a value, relative error <= 2**-11; values beyond fp16's
    range (65504) are clipped to it."""

    name = "fp16"
    lossless = False

    def encode(self, xp: ModuleType, array: Any) -> Encoded:
        require_finite(xp, array)
        half = xp.clip(flat(array), -FP16_MAX, FP16_MAX).astype(xp.float16)
        return Encoded(self.name, tuple(array.shape), str(array.dtype), (half,))

    def part_specs(self, size: int, dtype: str,
                   params: dict[str, Any]) -> list[tuple[str, int]]:
        return [("float16", size)]

    def decode_add(self, encoded: Encoded, out: np.ndarray, scale: float = 1.0) -> None:
        _add_blocks(np.asarray(encoded.parts[0]), out.reshape(-1), scale)


def _add_blocks(values: np.ndarray, out: np.ndarray, scale: float) -> None:
    """``out += scale * values`` a block at a time (values may be a narrower dtype)."""
    for start in range(0, out.size, DECODE_BLOCK):
        block = values[start:start + DECODE_BLOCK].astype(out.dtype)
        if scale != 1.0:
            block *= scale
        out[start:start + DECODE_BLOCK] += block
