"""The bundled digits dataset (scikit-learn's 8x8 handwritten digits), split and sharded."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zps.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Dataset:
    """Train and held-out test arrays (features scaled to [0, 1], integer labels)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int

    def shard(self, index: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Worker ``index`` of ``count``'s share of the training split (strided, disjoint)."""
        if not 0 <= index < count:
            raise ConfigError(f"worker index {index} must be in [0, {count})")
        return self.x_train[index::count], self.y_train[index::count]


def load_digits(test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """Load the 1797 digit images shipped with scikit-learn; no network needed."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise ConfigError(
            "the digits jobs need scikit-learn: pip install 'zps[jobs]'"
        ) from None
    x, y = sk_load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return Dataset(x[train], y[train].astype(np.int64), x[test], y[test].astype(np.int64), 10)
