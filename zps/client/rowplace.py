"""Where the rows of a row table live, and merging a batch of ids (sans-IO, vectorized).

Ids are spread over every server of the client's list by a fixed mixing hash of the id
(all clients agree without talking to each other). Before anything is sent, a batch is
deduplicated and the updates of repeated ids summed (``np.unique`` and a segment sum),
then split by server; replies are put back in the batch's order through the inverse.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zps.store.idindex import mix64

ROW_SALT = 0x2545F4914F6CDD1D  # distinct from the servers' index hash: no correlation


def shard_of(ids: np.ndarray, servers: int) -> np.ndarray:
    """The server index of each id, in [0, servers)."""
    return (mix64(ids, ROW_SALT) % np.uint64(servers)).astype(np.int64)


@dataclass(frozen=True, slots=True)
class RowBatch:
    """A batch of ids, deduplicated and split by server.

    ``unique`` are the distinct ids (sorted), ``inverse`` maps each position of the batch
    (flattened) to its distinct id, ``parts[s]`` are the indices into ``unique`` that server
    ``s`` holds (in increasing order)."""

    shape: tuple[int, ...]
    unique: np.ndarray
    inverse: np.ndarray
    parts: tuple[np.ndarray, ...]

    def summed(self, updates: np.ndarray) -> np.ndarray:
        """``updates`` (one row per position of the batch) summed per distinct id."""
        flat = updates.reshape(self.inverse.size, updates.shape[-1])
        order = np.argsort(self.inverse, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(self.inverse[order]) != 0])
        if not flat.size:
            return np.zeros((self.unique.size, flat.shape[1]), flat.dtype)
        return np.add.reduceat(flat[order], starts, axis=0)

    def merged(self, rows: list[np.ndarray], dim: int, dtype: np.dtype) -> np.ndarray:
        """The rows each server sent for its part, back in the batch's shape."""
        distinct = np.empty((self.unique.size, dim), dtype)
        for part, got in zip(self.parts, rows, strict=True):
            distinct[part] = got
        return distinct[self.inverse].reshape(*self.shape, dim)


def batch(ids: np.ndarray, servers: int) -> RowBatch:
    """Deduplicate ``ids`` (any shape) and split the distinct ones by server."""
    flat = ids.reshape(-1)
    unique, inverse = np.unique(flat, return_inverse=True)
    owner = shard_of(unique, servers)
    order = np.argsort(owner, kind="stable")
    bounds = np.searchsorted(owner[order], np.arange(servers + 1))
    parts = tuple(order[bounds[s]:bounds[s + 1]] for s in range(servers))
    return RowBatch(ids.shape, unique, inverse.reshape(-1), parts)
