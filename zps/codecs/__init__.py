"""Compression of updates: ``none``, ``fp16``, ``int8``, ``sign``, ``topk``, error feedback.

Codecs are array-module agnostic on the encoding side (NumPy, or CuPy on a GPU worker) and
decode on the server fused with the apply (``decode_add``). Specs and header params are
checked by one parser (``parse_codec_spec``) on both sides; anything wrong is a
``CodecError``.
"""

from __future__ import annotations

from zps.codecs.base import (
    Codec,
    Compressed,
    Encoded,
    FeedbackCodec,
    add_scaled,
    check_parts,
    decode,
)
from zps.codecs.errors import CodecError
from zps.codecs.feedback import ErrorFeedback
from zps.codecs.quantized import Int8Codec, SignCodec
from zps.codecs.registry import CODECS, codec_for, make_codec
from zps.codecs.simple import Fp16Codec, NoCodec
from zps.codecs.sparse import TopKCodec
from zps.codecs.spec import parse_codec_spec

__all__ = [
    "CODECS",
    "Codec",
    "CodecError",
    "Compressed",
    "Encoded",
    "ErrorFeedback",
    "FeedbackCodec",
    "Fp16Codec",
    "Int8Codec",
    "NoCodec",
    "SignCodec",
    "TopKCodec",
    "add_scaled",
    "check_parts",
    "codec_for",
    "decode",
    "make_codec",
    "parse_codec_spec",
]
