"""Admission counting for row tables: how often each not-yet-stored id was pushed.

A row is stored only once its id has been pushed ``admit_after`` times (as Paddle's and
DeepRec's count filters do); until then its pushes are counted in a count-min sketch of
fixed size, so memory stays bounded under an endless stream of new ids. Two things keep
the sketch from filling up: a push raises only the cells at the id's current minimum
(conservative update: other ids sharing a cell are overcounted less), and every ``width``
counted pushes all counts are halved (aging), so an id must reach ``admit_after`` pushes
within a recent window, and one-off ids fade. A sketch may still overcount (it admits a
little early), never undercount. Deterministic: the same pushes in the same order give the
same counts on a replica.
"""

from __future__ import annotations

import numpy as np

from zps.store.idindex import mix64

DEPTH = 4
WIDTH = 1 << 18
_SALT = 0x632BE59BD9B4E019


class CountSketch:
    """Push counts per id, ``depth`` rows of ``width`` counters."""

    def __init__(self, depth: int = DEPTH, width: int = WIDTH) -> None:
        self.counts = np.zeros((depth, width), np.uint32)
        self.pending = 0  # ids counted and not stored yet (an estimate: cells are shared)
        self.counted = 0  # pushes counted since the last halving

    def count(self, ids: np.ndarray) -> np.ndarray:
        """Count one push of each of ``ids`` (distinct); each id's count now."""
        depth, width = self.counts.shape
        cells = np.stack([(mix64(ids, salt=(_SALT * (d + 1)) % 2**64) % np.uint64(width))
                          .astype(np.int64) for d in range(depth)])
        rows = np.arange(depth)[:, None]
        seen = self.counts[rows, cells]
        before = seen.min(axis=0)
        # Conservative update; ids sharing a cell in this batch raise it once (max, not sum).
        raise_to = np.where(seen == before, before + 1, seen).astype(np.uint32)
        np.maximum.at(self.counts, (np.broadcast_to(rows, cells.shape), cells), raise_to)
        self.pending += int(np.count_nonzero(before == 0))
        self.counted += ids.size
        if self.counted >= width:
            self.counts >>= 1  # aging: old counts fade
            self.counted = 0
        return before + 1  # (its count after this push, before any halving)

    def admitted(self, n: int) -> None:
        self.pending = max(0, self.pending - n)

    @property
    def nbytes(self) -> int:
        return int(self.counts.nbytes)
