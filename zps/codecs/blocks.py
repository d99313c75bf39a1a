"""Walking a flat tensor a bounded piece at a time, so no step needs a full-size temporary.

Block codecs see the tensor as whole blocks of ``block`` values plus one shorter last block;
``row_groups`` hands those out as 2-D views (rows of blocks) of about ``CHUNK`` values, so a
per-block scale broadcasts down a column and nothing is copied or padded.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

# Values handled at a time by encoders and decoders: bounds every temporary they make.
CHUNK = 1 << 18


def row_groups(values: Any, block: int) -> Iterator[tuple[int, Any]]:
    """``(first block index, view)`` pairs covering the 1-D ``values`` in order: each view is
    ``(rows, block)`` of about ``CHUNK`` values, and the last, partial block ``(1, rest)``."""
    full = values.size // block
    rows = max(1, CHUNK // block)
    for first in range(0, full, rows):
        count = min(rows, full - first)
        yield first, values[first * block:(first + count) * block].reshape(count, block)
    if values.size % block:
        yield full, values[full * block:].reshape(1, -1)


def group_size(size: int, block: int) -> int:
    """The most values one ``row_groups`` view of a ``size``-value tensor holds."""
    return min(size, max(1, CHUNK // block) * block)


def add_scaled_chunks(out: np.ndarray, base: np.ndarray, values: np.ndarray,
                      factor: np.generic) -> None:
    """``out = base + factor * values`` over flat arrays, the product rounded to ``out``'s
    dtype first, through one scratch buffer of at most ``CHUNK`` values.

    ``base`` may be ``out`` itself. The bits are those of
    ``out[:] = base + np.multiply(values, factor, dtype=out.dtype)``.
    """
    scratch = np.empty(min(out.size, CHUNK), out.dtype)
    for start in range(0, out.size, CHUNK):
        stop = min(start + CHUNK, out.size)
        product = scratch[:stop - start]
        np.multiply(values[start:stop], factor, out=product, dtype=out.dtype)
        np.add(base[start:stop], product, out=out[start:stop])


def cast_add(out: np.ndarray, values: np.ndarray, factor: np.generic) -> None:
    """``out += factor * values`` over flat arrays, ``values`` first cast to ``out``'s dtype
    (how a decoder widens fp16), with temporaries of at most ``CHUNK`` values."""
    if factor == 1:
        # The ufunc casts through its own small buffer: no full-size copy of ``values``.
        np.add(out, values, out=out, dtype=out.dtype)
    else:
        add_scaled_chunks(out, out, values, factor)
