"""Codec specs (``int8:256``, ``topk:0.01``...) and codec params, checked by one set of rules.

The client parses the spec it is configured with and the server the spec and params a
message names, with the same functions, so the two can never disagree about what is valid.
"""

from __future__ import annotations

import re
from typing import Any

from zps.codecs.errors import CodecError

DEFAULT_BLOCK = 256
MIN_BLOCK = 8
MAX_BLOCK = 1 << 16
DEFAULT_RATIO = 0.01

# Longer text is never a valid spec; refusing it first keeps hostile specs cheap to reject.
MAX_SPEC_CHARS = 64

ACCEPTED = (
    f"use none, fp16, int8[:BLOCK] or sign[:BLOCK] (BLOCK a multiple of {MIN_BLOCK} in "
    f"[{MIN_BLOCK}, {MAX_BLOCK}], default {DEFAULT_BLOCK}) or topk[:RATIO] (RATIO a number in "
    f"(0, 1], default {DEFAULT_RATIO})"
)

# ASCII digits only: int() and float() would also take spaces, '_' and other scripts' digits.
_BLOCKED = re.compile(r"(int8|sign)(?::([0-9]{1,6}))?")
_TOPK = re.compile(r"topk(?::((?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]{1,3})?))?")


def parse_codec_spec(text: object) -> str:
    """The canonical form of a codec spec: ``"int8"`` -> ``"int8:256"``, ``"topk:.1"`` ->
    ``"topk:0.1"``, ``"none"`` -> ``"none"``.

    Raises ``CodecError`` (code ``"bad_header"``) for anything else, with a sentence naming
    the accepted forms.
    """
    if isinstance(text, str) and len(text) <= MAX_SPEC_CHARS:
        if text in ("none", "fp16"):
            return text
        if match := _BLOCKED.fullmatch(text):
            name, block = match.groups()
            if block is None or _is_block(int(block)):
                return f"{name}:{int(block) if block else DEFAULT_BLOCK}"
        elif match := _TOPK.fullmatch(text):
            ratio = float(match.group(1)) if match.group(1) else DEFAULT_RATIO
            if _is_ratio(ratio):
                return f"topk:{ratio!r}"
    raise CodecError("bad_header", f"codec {_shown(text)} is not valid: {ACCEPTED}")


def check_block(block: object) -> int:
    """``block`` if it is a valid block size (an int, a multiple of 8 in [8, 65536]), else
    ``CodecError``."""
    if isinstance(block, int) and not isinstance(block, bool) and _is_block(block):
        return block
    raise CodecError("bad_header", f"codec block must be a multiple of {MIN_BLOCK} in "
                                   f"[{MIN_BLOCK}, {MAX_BLOCK}], got {_shown(block)}")


def check_ratio(ratio: object) -> float:
    """``ratio`` as a float if it is a valid topk ratio (finite, in (0, 1]), else
    ``CodecError``."""
    if isinstance(ratio, int | float) and not isinstance(ratio, bool) and _is_ratio(ratio):
        return float(ratio)
    raise CodecError("bad_header", f"topk ratio must be a number in (0, 1], got {_shown(ratio)}")


def block_param(params: object) -> int:
    """The ``block`` a message header's codec params give (``DEFAULT_BLOCK`` if absent),
    checked like a spec's; ``CodecError`` if it is wrong."""
    return check_block(header_param(params, "block", DEFAULT_BLOCK))


def k_param(params: object, size: int) -> int:
    """The ``k`` a topk header gives: how many values travel, an int in [0, size]."""
    k = header_param(params, "k", None)
    if isinstance(k, int) and not isinstance(k, bool) and 0 <= k <= size:
        return k
    raise CodecError("bad_header", f"topk k must be an integer in [0, {size}], got {_shown(k)}")


def header_param(params: object, key: str, default: Any) -> Any:
    """``params[key]`` (or ``default``); ``CodecError`` if ``params`` is not a map."""
    if not isinstance(params, dict):
        raise CodecError("bad_header", f"codec params must be a map, got {_shown(params)}")
    return params.get(key, default)


def _is_block(block: int) -> bool:
    return MIN_BLOCK <= block <= MAX_BLOCK and block % MIN_BLOCK == 0


def _is_ratio(ratio: float) -> bool:
    return 0 < ratio <= 1  # false for NaN and inf; never converts a huge int to float


def _shown(value: object) -> str:
    """``value`` for an error message, cut short: it may come from a hostile peer."""
    text = repr(value)
    return text if len(text) <= MAX_SPEC_CHARS else f"{text[:MAX_SPEC_CHARS]}..."
