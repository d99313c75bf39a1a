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
    order: np.ndarray  # positions of the batch sorted by id (empty: the batch was sorted)
    starts: np.ndarray  # where each distinct id's run starts in that order

    @property
    def identity(self) -> bool:
        """The batch was distinct and sorted: nothing to merge or spread."""
        return not self.order.size and self.unique.size == self.inverse.size

    def summed(self, updates: np.ndarray) -> np.ndarray:
        """``updates`` (one row per position of the batch) summed per distinct id."""
        flat = updates.reshape(self.inverse.size, updates.shape[-1])
        if self.identity:
            return flat
        if not flat.size:
            return np.zeros((self.unique.size, flat.shape[1]), flat.dtype)
        return np.add.reduceat(np.take(flat, self.order, axis=0), self.starts, axis=0)

    def merged(self, rows: list[np.ndarray], dim: int, dtype: np.dtype) -> np.ndarray:
        """The rows each server sent for its part, back in the batch's shape."""
        if len(rows) == 1:  # one server: its rows are the distinct ones, in order
            distinct = np.asarray(rows[0], dtype)
        else:
            distinct = np.empty((self.unique.size, dim), dtype)
            for part, got in zip(self.parts, rows, strict=True):
                distinct[part] = got
        if self.identity:
            return distinct.reshape(*self.shape, dim)
        return np.take(distinct, self.inverse, axis=0).reshape(*self.shape, dim)


def distinct(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The sorted distinct values of ``flat``; for each element, its index among them; the
    sorting order and where each value's run starts in it (empty when ``flat`` was sorted
    and distinct already). One stable argsort (a radix sort for int64: faster than
    ``np.unique``'s), shared by the merge of updates."""
    empty = np.zeros(0, np.int64)
    if flat.size <= 1 or bool((flat[1:] > flat[:-1]).all()):  # already sorted, distinct
        return flat, np.arange(flat.size), empty, empty
    order = flat.argsort(kind="stable")
    ordered = flat[order]
    first = np.empty(flat.size, bool)
    first[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    inverse = np.empty(flat.size, np.int64)
    inverse[order] = np.cumsum(first) - 1
    return ordered[first], inverse, order, np.flatnonzero(first)


def batch(ids: np.ndarray, servers: int) -> RowBatch:
    """Deduplicate ``ids`` (any shape) and split the distinct ones by server."""
    flat = ids.reshape(-1)
    unique, inverse, order, starts = distinct(flat)
    if servers == 1:
        return RowBatch(ids.shape, unique, inverse, (np.arange(unique.size),), order, starts)
    owner = shard_of(unique, servers)
    by_owner = np.argsort(owner, kind="stable")
    bounds = np.searchsorted(owner[by_owner], np.arange(servers + 1))
    parts = tuple(by_owner[bounds[s]:bounds[s + 1]] for s in range(servers))
    return RowBatch(ids.shape, unique, inverse, parts, order, starts)
