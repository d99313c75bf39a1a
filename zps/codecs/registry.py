"""Codecs by spec: ``make_codec`` builds one, ``codec_for`` shares one (server side)."""

from __future__ import annotations

from functools import lru_cache

from zps.codecs.base import Codec
from zps.codecs.quantized import Int8Codec, SignCodec
from zps.codecs.simple import Fp16Codec, NoCodec
from zps.codecs.sparse import TopKCodec
from zps.codecs.spec import parse_codec_spec

CODECS = ("none", "fp16", "int8", "sign", "topk")

# Codecs codec_for keeps: more than the distinct specs a deployment uses, few enough that
# a peer sending many distinct specs costs nothing.
SHARED_CODECS = 32


def make_codec(spec: str, *, seed: int | None = None) -> Codec:
    """A new codec from its spec: ``none``, ``fp16``, ``int8[:BLOCK]``, ``sign[:BLOCK]`` or
    ``topk[:RATIO]`` (see ``parse_codec_spec``); ``seed`` seeds int8's stochastic rounding.

    Raises ``CodecError`` (a ``ValueError``) for a bad spec.
    """
    name, _, arg = parse_codec_spec(spec).partition(":")
    if name == "int8":
        return Int8Codec(int(arg), seed=seed)
    if name == "sign":
        return SignCodec(int(arg))
    if name == "topk":
        return TopKCodec(float(arg))
    return Fp16Codec() if name == "fp16" else NoCodec()


def codec_for(spec: str) -> Codec:
    """A codec for ``spec``, shared with every caller of the same canonical spec.

    For decoding and for encoding pulls on the server: no codec (and no random generator)
    is built per tensor. The last ``SHARED_CODECS`` specs used are kept; an older one is
    built again when asked for. Raises ``CodecError`` for a bad spec.
    """
    return _shared(parse_codec_spec(spec))


@lru_cache(maxsize=SHARED_CODECS)
def _shared(canonical: str) -> Codec:
    return make_codec(canonical)
