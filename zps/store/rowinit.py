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


@dataclass(frozen=True, slots=True)
class RowInit:
    """A parsed ``init``: ``zeros``, ``normal:STD`` or ``uniform:A`` (values in [-A, A])."""

    kind: str
    scale: float = 0.0

    def __str__(self) -> str:
        return self.kind if self.kind == "zeros" else f"{self.kind}:{self.scale!r}"


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
    """The initial rows of ``ids`` (any shape), as an array of ``ids.shape + (dim,)``.

    Each 64-bit hash gives two 24-bit uniform numbers (in float32): two uniform values, or
    through Box-Muller two normal ones, so a row of ``dim`` values costs ``dim / 2``
    hashes."""
    flat = np.ascontiguousarray(ids, np.int64).reshape(-1)
    if init.kind == "zeros" or not flat.size or not dim:
        return np.zeros((*np.shape(ids), dim), dtype)
    half = (dim + 1) // 2
    base = mix64(flat, seed)[:, None]  # one stream per row, one counter per pair of values
    counters = np.arange(half, dtype=np.uint64)[None, :] * np.uint64(0x9E3779B97F4A7C15)
    bits = mix64((base + counters).view(np.int64))
    high = ((bits >> np.uint64(40)).astype(np.float32) + np.float32(0.5)) * _SCALE
    low = ((bits & np.uint64(0xFFFFFF)).astype(np.float32) + np.float32(0.5)) * _SCALE
    if init.kind == "uniform":
        pair = (high, low)
        scale = np.float32(init.scale)
        values = np.concatenate([(u * np.float32(2) - np.float32(1)) * scale for u in pair],
                                axis=1)
    else:  # Box-Muller: (high, low) in (0, 1) -> two independent normals
        radius = np.sqrt(np.float32(-2) * np.log(high)) * np.float32(init.scale)
        angle = np.float32(2 * np.pi) * low
        values = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    return values[:, :dim].astype(dtype, copy=False).reshape(*np.shape(ids), dim)


_SCALE = np.float32(1.0 / (1 << 24))  # 24-bit uniforms: exact in float32
