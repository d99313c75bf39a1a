"""Compression of updates: ``none``, ``fp16``, ``int8``, ``sign``, ``topk``, error feedback.

Codecs are array-module agnostic on the encoding side (NumPy, or CuPy on a GPU worker) and
decode on the server fused with the apply (``decode_add``).
"""

from __future__ import annotations

from typing import Any

from zps.codecs.base import Codec, Compressed, Encoded, add_scaled, check_parts, decode
from zps.codecs.feedback import ErrorFeedback
from zps.codecs.quantized import Int8Codec, SignCodec
from zps.codecs.simple import Fp16Codec, NoCodec
from zps.codecs.sparse import TopKCodec

CODECS = ("none", "fp16", "int8", "sign", "topk")


def make_codec(spec: str, **kwargs: Any) -> Codec:
    """A codec from its name, ``int8:BLOCK``, ``sign:BLOCK`` or ``topk:RATIO``."""
    name, _, arg = spec.partition(":")
    if name == "none" and not arg:
        return NoCodec()
    if name == "fp16" and not arg:
        return Fp16Codec()
    if name == "int8":
        return Int8Codec(int(arg), **kwargs) if arg else Int8Codec(**kwargs)
    if name == "sign":
        return SignCodec(int(arg)) if arg else SignCodec()
    if name == "topk":
        return TopKCodec(float(arg)) if arg else TopKCodec()
    raise ValueError(f"codec {spec!r}: use none, fp16, int8[:BLOCK], sign[:BLOCK] or "
                     "topk[:RATIO]")


__all__ = [
    "CODECS",
    "Codec",
    "Compressed",
    "Encoded",
    "ErrorFeedback",
    "Fp16Codec",
    "Int8Codec",
    "NoCodec",
    "SignCodec",
    "TopKCodec",
    "add_scaled",
    "check_parts",
    "decode",
    "make_codec",
]
