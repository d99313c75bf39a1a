"""Admission counting for row tables: how often each not-yet-stored id was pushed.

A row is stored only once its id has been pushed ``admit_after`` times (as Paddle's and
DeepRec's count filters do); until then its pushes are counted in a count-min sketch of
fixed size, so memory stays bounded under an endless stream of new ids. A sketch may
overcount (ids sharing every cell), never undercount: an id is admitted at the latest on its
``admit_after``-th push. Deterministic: the same pushes in the same order give the same
counts on a replica.
"""

from __future__ import annotations

import numpy as np

from zps.store.idindex import mix64

DEPTH = 4
WIDTH = 1 << 18


class CountSketch:
    """Push counts per id, ``depth`` rows of ``width`` counters."""

    def __init__(self, depth: int = DEPTH, width: int = WIDTH) -> None:
        self.counts = np.zeros((depth, width), np.uint32)
        self.pending = 0  # ids counted and not stored yet (an estimate: cells are shared)

    def count(self, ids: np.ndarray) -> np.ndarray:
        """Count one push of each of ``ids`` (distinct); each id's count now."""
        depth, width = self.counts.shape
        cells = [(mix64(ids, salt=(0x632BE59BD9B4E019 * (d + 1)) % 2**64) % np.uint64(width))
                 .astype(np.int64) for d in range(depth)]
        before = np.min([self.counts[d, c] for d, c in enumerate(cells)], axis=0)
        for d, c in enumerate(cells):
            np.add.at(self.counts[d], c, 1)
        self.pending += int(np.count_nonzero(before == 0))
        return np.min([self.counts[d, c] for d, c in enumerate(cells)], axis=0)

    def admitted(self, n: int) -> None:
        self.pending = max(0, self.pending - n)

    @property
    def nbytes(self) -> int:
        return int(self.counts.nbytes)
