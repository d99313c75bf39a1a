"""Row tables: rows of ``dim`` values keyed by int64 ids, stored on first touch (sans-IO).

A row that was never stored reads as its initial value (``zps.store.rowinit``); pulls
never create rows. A push stores a row once its id has been pushed ``admit_after`` times
(counted meanwhile in a bounded counting sketch) and updates it; with a row optimizer the
push is a gradient and the optimizer's step is what gets added. Each stored row keeps, in
arrays beside its values, when it was last pushed, how many pushes it had, and its
optimizer state. Rows leave by eviction: ``max_rows`` (this server's share) evicts the
least recently pushed first, ``evict_after`` seconds removes stale rows a bounded scan at a
time. Everything is vectorized: an id index of NumPy arrays, gathers and scatters.

Determinism: a replica that applies the same calls in the same order (ids, updates, scale,
time) holds the same rows, values and state, whatever its slots; ties in recency are
broken by id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from zps.store.admission import CountSketch
from zps.store.errors import BadIds, BadRowSpec
from zps.store.idindex import IdIndex
from zps.store.rowinit import RowInit, initial_rows, parse_init, table_seed
from zps.store.rowopt import RowOptimizer, make_row_optimizer

ROW_DTYPES = ("float32", "float64")
MAX_DIM = 1 << 16
EVICT_SCAN = 1 << 16  # rows looked at per eviction tick


@dataclass(frozen=True, slots=True)
class RowSpec:
    """What ``init_rows`` fixes about a row table (the same on every server)."""

    dim: int
    dtype: str
    init: RowInit
    optimizer: RowOptimizer | None
    admit_after: int = 1
    evict_after: float | None = None
    max_rows: int | None = None  # over all servers; each keeps its share

    def to_wire(self) -> dict[str, Any]:
        return {"dim": self.dim, "dtype": self.dtype, "init": str(self.init),
                "optimizer": self.optimizer.spec() if self.optimizer else None,
                "admit_after": self.admit_after, "evict_after": self.evict_after,
                "max_rows": self.max_rows}


def parse_row_spec(wire: Any) -> RowSpec:
    """A ``RowSpec`` from its wire form; ``BadRowSpec`` naming the problem."""
    if not isinstance(wire, dict):
        raise BadRowSpec("row table settings must be a map")
    dim, dtype = wire.get("dim"), wire.get("dtype", "float32")
    if not isinstance(dim, int) or isinstance(dim, bool) or not 0 < dim <= MAX_DIM:
        raise BadRowSpec(f"row dim must be an integer in 1..{MAX_DIM}, got {dim!r}")
    if not isinstance(dtype, str) or dtype not in ROW_DTYPES:
        raise BadRowSpec(f"row dtype must be one of {ROW_DTYPES}, got {dtype!r}")
    admit = wire.get("admit_after", 1)
    if not _int(admit) or not 1 <= admit <= 1 << 16:
        raise BadRowSpec("admit_after must be an integer >= 1")
    evict = wire.get("evict_after")
    if evict is not None and (isinstance(evict, bool) or not isinstance(evict, int | float)
                              or not evict > 0 or evict == float("inf")):
        raise BadRowSpec("evict_after must be a number of seconds > 0, or None")
    cap = wire.get("max_rows")
    if cap is not None and (not _int(cap) or cap < 1):
        raise BadRowSpec("max_rows must be an integer >= 1, or None")
    return RowSpec(dim, dtype, parse_init(wire.get("init", "zeros")),
                   make_row_optimizer(wire.get("optimizer")), admit,
                   None if evict is None else float(evict), cap)


class RowTable:
    """One row table's shard on one server."""

    kind = "rows"

    def __init__(self, name: str, spec: RowSpec, share: int = 1) -> None:
        self.name = name
        self.spec = spec
        self.share = share
        self.optimizer = spec.optimizer
        self.version = 0
        self.seed = table_seed(name)
        self.dtype = np.dtype(spec.dtype)
        self.limit = None if spec.max_rows is None else -(-spec.max_rows // max(1, share))
        self.index = IdIndex()
        self.values = np.zeros((0, spec.dim), self.dtype)
        self.last_push = np.zeros(0, np.float64)
        self.pushes = np.zeros(0, np.int64)
        self.row_ids = np.zeros(0, np.int64)  # the id in each slot
        self.live = np.zeros(0, bool)  # whether a slot holds a row
        self.state = {k: np.zeros((0, spec.dim), self.dtype)
                      for k in (self.optimizer.state_keys if self.optimizer else ())}
        self._free: list[np.ndarray] = []  # slots of evicted rows, reused first
        self._used = 0  # slots ever handed out (the high-water mark)
        self.sketch = CountSketch() if spec.admit_after > 1 else None
        self.admitted = 0
        self.evicted = 0
        self._cursor = 0

    # ------------------------------------------------------------ reading

    def __len__(self) -> int:
        return len(self.index)

    @property
    def nbytes(self) -> int:
        """Bytes held for stored rows: values, metadata, state, index."""
        arrays = [self.values, self.last_push, self.pushes, self.row_ids, self.live,
                  *self.state.values()]
        return sum(int(a.nbytes) for a in arrays) + self.index.nbytes

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "dtype": self.spec.dtype, "shape": [None, self.spec.dim],
                "version": self.version, "rows": len(self), "bytes": self.nbytes,
                "admitted": self.admitted, "evicted": self.evicted,
                "pending": self.sketch.pending if self.sketch else 0}

    def read(self, ids: np.ndarray) -> np.ndarray:
        """The rows of ``ids`` (initial values for rows not stored): (n, dim), new."""
        slots = self.index.lookup(ids)
        stored = slots >= 0
        if stored.all():  # the common case: one gather
            return np.take(self.values, slots, axis=0)
        out = np.empty((ids.size, self.spec.dim), self.dtype)
        out[stored] = self.values[slots[stored]]
        out[~stored] = initial_rows(self.spec.init, self.seed, ids[~stored], self.spec.dim,
                                    self.dtype)
        return out

    # ------------------------------------------------------------ writing

    def apply(self, ids: np.ndarray, updates: np.ndarray, scale: float, now: float) -> None:
        """Add ``scale * updates`` (gradients, with an optimizer) to the rows of ``ids``
        (distinct), storing the ones admitted now; ``now`` (seconds) is when. Checked
        before anything changes: ``BadIds`` for a misshapen update, or when the new rows
        would not fit."""
        if updates.shape != (ids.size, self.spec.dim):
            raise BadIds(f"row updates of {self.name!r} must be {ids.size} x {self.spec.dim}, "
                         f"got {list(updates.shape)}")
        slots = self.index.lookup(ids)
        fresh = slots < 0
        if fresh.any():
            self._check_room(int(np.count_nonzero(fresh)))
            keep = self._admit(ids[fresh])
            kept = np.flatnonzero(fresh)[keep]
            slots[kept] = self._store(ids[kept])
            if not keep.all():
                chosen = slots >= 0
                ids, updates, slots = ids[chosen], updates[chosen], slots[chosen]
        grads = updates if scale == 1.0 else updates * self.dtype.type(scale)
        grads = grads.astype(self.dtype, copy=False)
        self.pushes[slots] += 1
        if self.optimizer is not None:
            state = {k: a[slots] for k, a in self.state.items()}
            delta = self.optimizer.step(grads, self.values[slots], state, self.pushes[slots])
            for key, rows in state.items():
                self.state[key][slots] = rows
        else:
            delta = grads
        self.values[slots] += delta
        self.last_push[slots] = now
        self.version += 1
        self._trim()

    def remove(self, ids: np.ndarray) -> None:
        """Evict ``ids`` (absent ones, and repeats, are ignored)."""
        slots = self.index.remove(np.unique(ids))
        slots = slots[slots >= 0]
        self.live[slots] = False
        self.evicted += slots.size
        self._free.append(slots)

    def stale(self, now: float) -> np.ndarray:
        """Ids not pushed for ``evict_after`` seconds, among the next ``EVICT_SCAN`` rows of
        a round-robin scan (never the whole table at once)."""
        if self.spec.evict_after is None or not self._used:
            return np.zeros(0, np.int64)
        start = self._cursor % self._used
        stop = min(self._used, start + EVICT_SCAN)
        self._cursor = stop % self._used
        window = slice(start, stop)
        old = self.live[window] & (self.last_push[window] < now - self.spec.evict_after)
        return np.sort(self.row_ids[window][old])

    def _admit(self, ids: np.ndarray) -> np.ndarray:
        """Which of ``ids`` (not stored) are stored now."""
        if self.sketch is None:
            return np.ones(ids.size, bool)
        return self.sketch.count(ids) >= self.spec.admit_after

    def _store(self, ids: np.ndarray) -> np.ndarray:
        """New rows for ``ids``: their initial values, fresh state; their slots."""
        slots = self._take_slots(ids.size)
        self.values[slots] = initial_rows(self.spec.init, self.seed, ids, self.spec.dim,
                                          self.dtype)
        self.last_push[slots] = 0.0
        self.pushes[slots] = 0
        self.row_ids[slots] = ids
        self.live[slots] = True
        if self.optimizer is not None:
            for key, array in self.state.items():
                array[slots] = self.optimizer.initial_state(key)
        self.index.insert(ids, slots)
        if self.sketch is not None:
            self.sketch.admitted(ids.size)
        self.admitted += ids.size
        return slots

    def reserve(self, n: int) -> np.ndarray:
        """``n`` free slots (for filling the table from a snapshot)."""
        return self._take_slots(n)

    def _check_room(self, n: int) -> None:
        """``BadIds`` unless ``n`` more rows fit (slot numbers are int32 in the index)."""
        free = sum(f.size for f in self._free)
        if self._used + n - min(n, free) >= 2**31:
            raise BadIds(f"row table {self.name!r} would hold more than 2**31 rows on this "
                         "server: use more servers, or max_rows")

    def _take_slots(self, n: int) -> np.ndarray:
        self._check_room(n)
        if len(self._free) > 1:
            self._free = [np.concatenate(self._free)]
        free = self._free[0] if self._free else np.zeros(0, np.int64)
        reused, rest = free[:n], free[n:]
        self._free = [rest] if rest.size else []
        grown = np.arange(self._used, self._used + n - reused.size, dtype=np.int64)
        self._used += grown.size
        self._grow(self._used)
        return np.concatenate([reused, grown])

    def _grow(self, need: int) -> None:
        capacity = self.values.shape[0]
        if need <= capacity:
            return
        size = max(need, capacity + capacity // 4, 1024)  # 1.25x: memory stays near use
        self.values = _resized(self.values, size)
        self.last_push = _resized(self.last_push, size)
        self.pushes = _resized(self.pushes, size)
        self.row_ids = _resized(self.row_ids, size)
        self.live = _resized(self.live, size)
        self.state = {k: _resized(a, size) for k, a in self.state.items()}

    def _trim(self) -> None:
        """Past the limit, evict the least recently pushed rows (ties: the smaller id)
        down to 95% of it: one pass over the rows evicts many, not one per push."""
        if self.limit is None or len(self) <= self.limit:
            return
        slots = np.flatnonzero(self.live[:self._used])
        ids = self.row_ids[slots]
        order = np.lexsort((ids, self.last_push[slots]))
        target = self.limit - self.limit // 20
        gone = np.sort(ids[order[:len(self) - target]])
        self.remove(gone)


def _resized(array: np.ndarray, size: int) -> np.ndarray:
    grown = np.zeros((size, *array.shape[1:]), array.dtype)
    grown[:array.shape[0]] = array
    return grown


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

