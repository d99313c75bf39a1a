"""Codecs with no blocks: ``none`` (raw values) and ``fp16`` (half precision)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from zps.codecs.base import Encoded, accumulate, feedback_view, flat, out_view, require_finite
from zps.codecs.blocks import CHUNK, cast_add

FP16_MAX = float(np.finfo(np.float16).max)


class NoCodec:
    """The values as they are: lossless."""

    name = "none"
    lossless = True

    def encode(self, xp: ModuleType, array: Any) -> Encoded:
        """The values themselves, as one flat part (a view of ``array`` where it can be)."""
        return Encoded(self.name, tuple(array.shape), str(array.dtype), (flat(array),))

    def part_specs(self, size: int, dtype: str,
                   params: dict[str, Any]) -> list[tuple[str, int]]:
        return [(dtype, size)]

    def decode_add(self, encoded: Encoded, out: np.ndarray, scale: float = 1.0) -> None:
        cast_add(out_view(out), np.asarray(encoded.parts[0]), out.dtype.type(scale))


class Fp16Codec:
    """Half precision: 2 bytes a value, relative error <= 2**-11; values beyond fp16's
    range (65504) are clipped to it."""

    name = "fp16"
    lossless = False

    def encode(self, xp: ModuleType, array: Any) -> Encoded:
        """``array`` rounded to float16; ``ValueError`` if it holds NaN or inf."""
        return self._encode(xp, array, feedback=False)

    def encode_feedback(self, xp: ModuleType, buf: Any, delta: Any = None) -> Encoded:
        """As ``encode`` (of ``buf`` plus ``delta``); ``buf`` is left holding
        ``buf - float(half(buf))`` (see ``FeedbackCodec``)."""
        feedback_view(buf)  # refuse a bad buffer before adding into it
        if delta is not None:
            accumulate(xp, buf, delta)
        return self._encode(xp, buf, feedback=True)

    def _encode(self, xp: ModuleType, array: Any, feedback: bool) -> Encoded:
        require_finite(xp, array)
        values = feedback_view(array) if feedback else flat(array)
        half = xp.empty(values.size, xp.float16)
        for start in range(0, values.size, CHUNK):
            piece = values[start:start + CHUNK]
            sent = half[start:start + CHUNK]
            sent[...] = xp.clip(piece, -FP16_MAX, FP16_MAX)  # the assignment rounds to fp16
            if feedback:
                piece -= sent.astype(piece.dtype)
        return Encoded(self.name, tuple(array.shape), str(array.dtype), (half,))

    def part_specs(self, size: int, dtype: str,
                   params: dict[str, Any]) -> list[tuple[str, int]]:
        return [("float16", size)]

    def decode_add(self, encoded: Encoded, out: np.ndarray, scale: float = 1.0) -> None:
        cast_add(out_view(out), np.asarray(encoded.parts[0]), out.dtype.type(scale))
