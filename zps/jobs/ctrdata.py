"""Synthetic click-through data shaped like Criteo's, drawn from a known model.

26 categorical fields, each value an int64 id from a large id space with Zipf-distributed
popularity, and 13 dense features. A click is drawn from a logistic model whose weights
are a deterministic function of each id (so the data never has to be stored whole), which
makes the best achievable AUC known: the AUC of the generating model's own logits on the
test split. Generated with NumPy, seeded, vectorized.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zps.store.idindex import mix64
from zps.store.rowinit import initial_rows, parse_init

FIELDS = 26
DENSE = 13
VOCAB = 1000  # distinct values per field (ranks; then hashed into the int64 space)
ZIPF = 1.15
WEIGHT_STD = 0.6  # spread of the true per-id weights
BIAS = -1.6  # about 20% clicks
TRAIN, TEST = 400_000, 50_000


@dataclass(frozen=True, slots=True)
class CtrData:
    """Ids (n, 26) int64, dense features (n, 13) float32 and labels (n,) float32, for the
    training and test splits, with the generating model's test logits."""

    train_ids: np.ndarray
    train_dense: np.ndarray
    train_labels: np.ndarray
    test_ids: np.ndarray
    test_dense: np.ndarray
    test_labels: np.ndarray
    test_logits: np.ndarray  # the true model's

    def shard(self, index: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Worker ``index`` of ``count``'s share of the training split."""
        return (self.train_ids[index::count], self.train_dense[index::count],
                self.train_labels[index::count])


def make_ctr(train: int = TRAIN, test: int = TEST, seed: int = 0) -> CtrData:
    """The same data for the same arguments, on every worker."""
    rng = np.random.default_rng(seed)
    n = train + test
    ranks = np.minimum(rng.zipf(ZIPF, (n, FIELDS)), VOCAB).astype(np.int64)
    fields = np.arange(FIELDS, dtype=np.int64)
    ids = mix64(ranks * FIELDS + fields, salt=seed).view(np.int64)  # anywhere in int64
    dense = rng.standard_normal((n, DENSE)).astype(np.float32)
    logits = true_logits(ids, dense, seed)
    labels = (rng.random(n) < 1 / (1 + np.exp(-logits))).astype(np.float32)
    return CtrData(ids[:train], dense[:train], labels[:train], ids[train:], dense[train:],
                   labels[train:], logits[train:])


def true_logits(ids: np.ndarray, dense: np.ndarray, seed: int) -> np.ndarray:
    """The generating model: a bias, one weight per id, a linear dense part."""
    weights = initial_rows(parse_init(f"normal:{WEIGHT_STD}"), 0x5EED + seed, ids, 1,
                           np.dtype(np.float64))[..., 0]
    dense_w = np.random.default_rng(seed + 99).standard_normal(DENSE) * 0.3
    return BIAS + weights.sum(axis=1) / np.sqrt(FIELDS / 4) + dense @ dense_w


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """The area under the ROC curve (rank statistic, ties averaged)."""
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(scores.size, np.float64)
    sorted_scores = scores[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(average, counts)
    positives = labels > 0.5
    n_pos = int(positives.sum())
    n_neg = labels.size - n_pos
    if not n_pos or not n_neg:
        return 0.5
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean binary cross-entropy of ``logits`` against ``labels``."""
    return float(np.mean(np.logaddexp(0, logits) - labels * logits))
