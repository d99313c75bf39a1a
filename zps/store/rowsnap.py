"""Row tables in snapshots and checkpoints: their stored rows, compacted, and metadata.

A row table's state is its settings, version and counters, and a few arrays: the stored
ids, their values, when each was last pushed, how many pushes each had, each optimizer
state array, and the admission sketch. A snapshot holds compacted copies (one row per
stored id, in id order), so a replica or a restore gets the same rows, metadata, optimizer
state and admission counts whatever slots the primary used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from zps.store.errors import BadRowSpec
from zps.store.rows import RowTable, parse_row_spec

# Arrays of a row table's state, in order, with the dtypes they may have.
FIXED = (("ids", ("int64",)), ("values", ("float32", "float64")),
         ("last_push", ("float64",)), ("pushes", ("int64",)))
SKETCH = "sketch"


@dataclass(frozen=True, slots=True, eq=False)
class RowState:
    """One row table in a snapshot. Equality compares array bits."""

    name: str
    spec: dict[str, Any]  # RowSpec.to_wire()
    share: int
    version: int
    counters: tuple[int, int, int, int]  # admitted, evicted, pending, counted since aging
    arrays: dict[str, np.ndarray]  # ids, values, last_push, pushes, state keys, sketch

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RowState):
            return NotImplemented
        mine, theirs = self.arrays, other.arrays
        return ((self.name, self.spec, self.share, self.version, self.counters)
                == (other.name, other.spec, other.share, other.version, other.counters)
                and mine.keys() == theirs.keys()
                and all(mine[k].dtype == theirs[k].dtype and mine[k].shape == theirs[k].shape
                        and mine[k].tobytes() == theirs[k].tobytes() for k in mine))

    __hash__ = None  # type: ignore[assignment]  # holds arrays


def row_state(table: RowTable) -> RowState:
    """A compacted copy of ``table``'s state (rows in id order)."""
    ids, slots = table.index.items()
    order = np.argsort(ids, kind="stable")
    ids, slots = ids[order], slots[order].astype(np.int64)
    arrays = {"ids": ids, "values": table.values[slots], "last_push": table.last_push[slots],
              "pushes": table.pushes[slots]}
    arrays.update({key: table.state[key][slots] for key in sorted(table.state)})
    if table.sketch is not None:
        arrays[SKETCH] = table.sketch.counts.copy()
    pending = table.sketch.pending if table.sketch else 0
    counted = table.sketch.counted if table.sketch else 0
    return RowState(table.name, table.spec.to_wire(), table.share, table.version,
                    (table.admitted, table.evicted, pending, counted), arrays)


def restore_rows(state: RowState) -> RowTable:
    """A ``RowTable`` holding ``state``; ``BadRowSpec`` if it does not fit its settings."""
    spec = parse_row_spec(state.spec)
    table = RowTable(state.name, spec, state.share)
    arrays = state.arrays
    expected = expected_keys((spec.optimizer is not None and spec.optimizer.state_keys) or (),
                             spec.admit_after > 1)
    if list(arrays) != expected:
        raise BadRowSpec(f"row table {state.name!r} holds arrays {list(arrays)}, its settings "
                         f"need {expected}")
    ids = arrays["ids"]
    n = ids.size
    for key, array in arrays.items():
        wanted = _shape(key, n, spec.dim, table.sketch.counts.shape if table.sketch else ())
        if array.shape != wanted or array.dtype.name not in dtypes_of(key, spec.dtype) \
                or ((key == "values" or key in table.state) and array.dtype != table.dtype):
            raise BadRowSpec(f"row table {state.name!r}: {key} is {array.dtype}"
                             f"{list(array.shape)}, its settings need {list(wanted)}")
    if n > 1 and not bool((ids[1:] > ids[:-1]).all()):
        raise BadRowSpec(f"row table {state.name!r}: its ids are not distinct and sorted")
    slots = table.reserve(n)
    table.values[slots] = arrays["values"]
    table.last_push[slots] = arrays["last_push"]
    table.pushes[slots] = arrays["pushes"]
    table.row_ids[slots] = ids
    table.live[slots] = True
    for key in table.state:
        table.state[key][slots] = arrays[key]
    table.index.insert(ids, slots)
    if table.sketch is not None:
        table.sketch.counts[...] = arrays[SKETCH]
        table.sketch.pending, table.sketch.counted = state.counters[2], state.counters[3]
    table.version = state.version
    table.admitted, table.evicted = state.counters[0], state.counters[1]
    return table


def _shape(key: str, n: int, dim: int, sketch: tuple[int, ...]) -> tuple[int, ...]:
    if key == SKETCH:
        return sketch
    return (n,) if key in ("ids", "last_push", "pushes") else (n, dim)


def expected_keys(state_keys: tuple[str, ...], sketch: bool) -> list[str]:
    """The arrays of a row table's state, in order."""
    return [*(k for k, _ in FIXED), *sorted(state_keys), *([SKETCH] if sketch else [])]


def dtypes_of(key: str, value_dtype: str) -> tuple[str, ...]:
    """The dtypes array ``key`` of a row state may have."""
    if key == SKETCH:
        return ("uint32",)
    fixed = dict(FIXED)
    return fixed.get(key, (value_dtype,))
