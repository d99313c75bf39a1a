"""From int64 ids to row slots, a batch at a time (sans-IO, vectorized).

An open-addressing hash table in NumPy arrays (linear probing): ``keys`` holds the ids,
``slots`` the row each maps to, ``state`` whether a position is empty, full or a
tombstone. Lookups, inserts and removals take arrays of ids and probe all of them at once:
each step of the loop handles every id still probing, so the Python loop runs as many
times as the longest probe (a handful at the load kept here), never once per id.
"""

from __future__ import annotations

import numpy as np

EMPTY, FULL, GONE = 0, 1, 2
MIN_CAPACITY = 64
MAX_LOAD = 0.6  # full positions per capacity before growing
MAX_USED = 0.75  # full + tombstones before rebuilding

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def mix64(values: np.ndarray, salt: int = 0) -> np.ndarray:
    """splitmix64's finalizer on int64 values (as uint64), after adding ``salt``: a fixed
    mixing hash, the same on every machine."""
    z = values.astype(np.int64, copy=False).view(np.uint64) + np.uint64(salt)
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


class IdIndex:
    """A map from distinct int64 ids to row slots (int32)."""

    def __init__(self, capacity: int = MIN_CAPACITY) -> None:
        self._alloc(max(MIN_CAPACITY, 1 << (max(1, capacity) - 1).bit_length()))
        self._full = 0
        self._gone = 0

    def __len__(self) -> int:
        return self._full

    @property
    def capacity(self) -> int:
        return int(self.keys.size)

    @property
    def nbytes(self) -> int:
        return int(self.keys.nbytes + self.slots.nbytes + self.state.nbytes)

    def _alloc(self, capacity: int) -> None:
        self.keys = np.zeros(capacity, np.int64)
        self.slots = np.zeros(capacity, np.int32)  # (rows of one server: < 2**31)
        self.state = np.zeros(capacity, np.int8)
        self._mask = np.uint64(capacity - 1)

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """The slot of each id (-1 where absent)."""
        found = self._find(ids)
        out = np.full(ids.shape, -1, np.int64)
        hit = found >= 0
        out[hit] = self.slots[found[hit]]
        return out

    def insert(self, ids: np.ndarray, slots: np.ndarray) -> None:
        """Map each of ``ids`` (distinct, none present) to its slot."""
        if not ids.size:
            return
        self._reserve(ids.size)
        pos = (mix64(ids) & self._mask).astype(np.int64)
        todo = np.arange(ids.size)
        while todo.size:
            p = pos[todo]
            free = self.state[p] != FULL
            claim = todo[free]
            # Several ids may reach the same free position in one step: the first wins,
            # the others probe on.
            _, first = np.unique(pos[claim], return_index=True)
            won = claim[first]
            taken = pos[won]
            self._gone -= int(np.count_nonzero(self.state[taken] == GONE))
            self.state[taken] = FULL
            self.keys[taken] = ids[won]
            self.slots[taken] = slots[won]
            lost = np.setdiff1d(todo, won, assume_unique=True)
            pos[lost] = (pos[lost] + 1) & int(self._mask)
            todo = lost
        self._full += ids.size

    def remove(self, ids: np.ndarray) -> np.ndarray:
        """Forget ``ids`` (distinct); returns the slots they had (-1 for absent ones)."""
        found = self._find(ids)
        hit = found >= 0
        out = np.full(ids.shape, -1, np.int64)
        out[hit] = self.slots[found[hit]]
        self.state[found[hit]] = GONE
        removed = int(np.count_nonzero(hit))
        self._full -= removed
        self._gone += removed
        return out

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """Every (id, slot), as two arrays in position order."""
        full = self.state == FULL
        return self.keys[full], self.slots[full]

    def _find(self, ids: np.ndarray) -> np.ndarray:
        """The position of each id in the table (-1 where absent)."""
        ids = np.ascontiguousarray(ids, np.int64).reshape(-1)
        out = np.full(ids.size, -1, np.int64)
        if not ids.size or not self._full:
            return out
        pos = (mix64(ids) & self._mask).astype(np.int64)
        todo = np.arange(ids.size)
        while todo.size:
            p = pos[todo]
            state = self.state[p]
            hit = (state == FULL) & (self.keys[p] == ids[todo])
            out[todo[hit]] = p[hit]
            going = ~hit & (state != EMPTY)
            todo = todo[going]
            pos[todo] = (pos[todo] + 1) & int(self._mask)
        return out

    def _reserve(self, more: int) -> None:
        """Grow (or clear tombstones) so that ``more`` inserts keep the load low."""
        capacity = self.capacity
        if (self._full + more) <= MAX_LOAD * capacity and \
                (self._full + self._gone + more) <= MAX_USED * capacity:
            return
        while (self._full + more) > MAX_LOAD * capacity:
            capacity *= 2
        keys, slots = self.items()
        self._alloc(capacity)
        self._full = self._gone = 0
        self.insert(keys, slots)
