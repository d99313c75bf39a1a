"""Aggregation rules: how a sync round turns the workers' updates into one update.

``mean`` (the default, ``1/N * sum_i delta_i``), ``weighted`` (by the weight >= 0 each
push carries, e.g. its batch size; a round whose weights are all 0 changes nothing),
``median`` (coordinate-wise) and ``trimmed:B`` (the coordinate-wise mean after dropping
the largest and smallest ``floor(B * N)`` values, at least one each when N >= 3). The last
two tolerate a bad or faulty worker.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Aggregator = Callable[[Sequence[np.ndarray], Sequence[float]], np.ndarray]


@dataclass(frozen=True, slots=True)
class Rule:
    """A parsed ``--aggregate`` value."""

    name: str
    trim: float = 0.0

    def __str__(self) -> str:
        return f"trimmed:{self.trim:g}" if self.name == "trimmed" else self.name


RULES = ("mean", "weighted", "median", "trimmed")


def parse_rule(text: str) -> Rule:
    """``mean``, ``weighted``, ``median`` or ``trimmed[:B]`` with 0 <= B < 0.5 (0.1 default)."""
    name, _, arg = text.partition(":")
    if name not in RULES or (arg and name != "trimmed"):
        raise ValueError(f"aggregation rule {text!r}: use mean, weighted, median or trimmed:B")
    if name != "trimmed":
        return Rule(name)
    trim = float(arg) if arg else 0.1
    if not 0 <= trim < 0.5:
        raise ValueError("the trimmed fraction B must be in [0, 0.5)")
    return Rule(name, trim)


def aggregate(rule: Rule, updates: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Combine one round's ``updates`` (same shape) by ``rule``; a new array or an input."""
    if rule.name == "weighted":
        return _weighted(updates, weights)
    if len(updates) == 1:
        return updates[0]
    if rule.name == "mean":
        return _mean(updates)
    stacked = np.stack(updates)
    if rule.name == "median":
        return np.median(stacked, axis=0).astype(updates[0].dtype, copy=False)
    k = trim_count(rule.trim, len(updates))
    ordered = np.sort(stacked, axis=0)
    return ordered[k:len(updates) - k].mean(axis=0, dtype=updates[0].dtype)


def trim_count(fraction: float, n: int) -> int:
    """How many values ``trimmed`` drops from each end for ``n`` updates."""
    if n < 3:
        return 0
    return min(max(1, math.floor(fraction * n)), (n - 1) // 2)


def _mean(updates: Sequence[np.ndarray]) -> np.ndarray:
    """``1/N * sum(updates)``, with one temporary and in-place adds."""
    total = np.array(updates[0], copy=True)
    for update in updates[1:]:
        np.add(total, update, out=total)
    np.multiply(total, 1.0 / len(updates), out=total)
    return total


def _weighted(updates: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """``sum(w_i * delta_i) / sum(w_i)`` (weights >= 0; all zero: no change)."""
    total_weight = float(sum(weights))
    if total_weight <= 0:
        return np.zeros_like(updates[0])
    total = np.multiply(updates[0], weights[0] / total_weight, dtype=updates[0].dtype)
    for update, weight in zip(updates[1:], weights[1:], strict=True):
        total += update * np.asarray(weight / total_weight, dtype=update.dtype)
    return total
