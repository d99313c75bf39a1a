"""The initial value of a row: a deterministic function of (table, id) (sans-IO).

A row that was never stored reads as its initial value, and every worker, the standby and
a restore must see the same one (an evicted row comes back the same). So the values come
from a counter-based generator: element j of row ``id`` of table ``t`` is a mixing hash of
(hash(t), id, j), turned into a uniform number, then into the distribution ``init`` asks
for. Vectorized over ids and columns.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from zps.store.errors import BadRowSpec
from zps.store.idindex import mix64

INITS = ("zeros", "normal", "uniform")
_TWO_53 = float(1 << 53)


@dataclass(frozen=True, slots=True)
class RowInit:
    """A parsed ``init``: ``zeros``, ``normal:STD`` or ``uniform:A`` (values in [-A, A])."""

    kind: str
    scale: float = 0.0

    def __str__(self) -> str:
        return self.kind if self.kind == "zeros" else f"{self.kind}:{self.scale:g}"


def parse_init(text: str) -> RowInit:
    """``zeros``, ``normal:STD`` or ``uniform:A`` with a finite number > 0; else
    ``BadRowSpec`` saying the accepted forms."""
    kind, _, arg = str(text).partition(":")
    try:
        scale = float(arg) if arg else math.nan
    except ValueError:
        scale = math.nan
    if kind == "zeros" and not arg:
        return RowInit("zeros")
    if kind in ("normal", "uniform") and math.isfinite(scale) and scale > 0:
        return RowInit(kind, scale)
    raise BadRowSpec(f"row init {text!r}: use zeros, normal:STD or uniform:A (a number > 0)")


def table_seed(name: str) -> int:
    """A 64-bit seed from a table's name (the same in every process)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


def initial_rows(init: RowInit, seed: int, ids: np.ndarray, dim: int,
                 dtype: np.dtype) -> np.ndarray:
    """The initial rows of ``ids`` (any shape), as an array of ``ids.shape + (dim,)``."""
    flat = np.ascontiguousarray(ids, np.int64).reshape(-1)
    if init.kind == "zeros" or not flat.size or not dim:
        return np.zeros((*np.shape(ids), dim), dtype)
    base = mix64(flat, seed)[:, None]  # one stream per row...
    if init.kind == "uniform":
        values = _uniform(base, np.arange(dim, dtype=np.uint64)) * 2.0 - 1.0
        values *= init.scale
    else:  # Box-Muller: two uniforms per value
        u1 = _uniform(base, np.arange(dim, dtype=np.uint64))
        u2 = _uniform(base, np.arange(dim, 2 * dim, dtype=np.uint64))
        values = np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)
        values *= init.scale
    return values.astype(dtype, copy=False).reshape(*np.shape(ids), dim)


def _uniform(base: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """Uniform numbers in [0, 1): ...and one counter per column, mixed with it."""
    bits = mix64((base + counters[None, :] * np.uint64(0x9E3779B97F4A7C15)).view(np.int64))
    return (bits >> np.uint64(11)).astype(np.float64) / _TWO_53
