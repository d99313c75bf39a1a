"""Tables: the interface every kind of table offers, and dense NumPy tables.

A table holds its value, its version (how many changes it has had) and, optionally, a
server-side optimizer. Replies send a table's buffer zero-copy, and snapshots and
checkpoints read it without copying; while such a reader still holds the buffer, an
update must not write into it. A dense table then writes ``base + update`` into a spare
buffer (double buffering: one pass, no allocation once the spares exist) and swaps.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from zps.codecs import Compressed, add_scaled
from zps.store.errors import TableConflict, TableMismatch
from zps.store.optimizers import Optimizer

SPARES = 2  # retired buffers a table keeps for reuse


class Reader(Protocol):
    """Something still reading a table's buffer (a zero-copy send, a snapshot)."""

    @property
    def done(self) -> bool: ...


Update = np.ndarray | Compressed


class Table(Protocol):
    """What the server needs of any table (dense now; row tables next)."""

    name: str
    kind: str
    version: int
    optimizer: Optimizer | None

    @property
    def nbytes(self) -> int: ...

    def describe(self) -> dict[str, Any]:
        """Kind, dtype, shape and version, for stats and discovery."""
        ...

    def apply(self, update: Update, scale: float) -> tuple[Update, float]:
        """Apply ``scale * update`` (a gradient if the table has an optimizer); returns
        what was added (the optimizer's step, or the update itself) and its scale."""
        ...


class DenseTable:
    """One dense tensor, its version, and an optional server-side optimizer."""

    kind = "dense"
    __slots__ = ("_dtype_name", "_frozen_state", "_pins", "_spares", "data", "name",
                 "optimizer", "swaps", "version")

    def __init__(self, name: str, data: np.ndarray, optimizer: Optimizer | None = None) -> None:
        self.name = name
        self.data = data
        self._dtype_name = data.dtype.name  # (computed on every access of dtype.name)
        self.version = 0
        self.optimizer = optimizer  # pushes are gradients and the server takes the step
        self.swaps = 0  # updates written to another buffer because a reader held this one
        self._pins: list[Reader] = []
        self._spares: list[tuple[np.ndarray, list[Reader]]] = []
        self._frozen_state: list[Reader] = []  # readers of the optimizer state (snapshots)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "dtype": self.data.dtype.name, "shape": list(self.shape),
                "version": self.version}

    def check(self, shape: tuple[int, ...], dtype: str, what: str) -> None:
        """Refuse (``TableMismatch``; ``TableConflict`` for an init) another shape/dtype."""
        if dtype != self._dtype_name or tuple(shape) != self.data.shape:
            cls = TableConflict if what == "init" else TableMismatch
            raise cls(f"{what} of {self.name!r} with {dtype}{list(shape)} does not match the "
                      f"table's {self.data.dtype}{list(self.data.shape)}")

    def pin(self, reader: Reader) -> None:
        """Keep the current buffer unchanged until ``reader.done`` turns true."""
        self._pins = [r for r in self._pins if not r.done]
        self._pins.append(reader)

    def freeze_state(self, reader: Reader) -> None:
        """Keep the optimizer's state arrays unchanged until ``reader.done`` (the next step
        then writes into copies). Several snapshots may hold it at once."""
        self._frozen_state = [r for r in self._frozen_state if not r.done]
        self._frozen_state.append(reader)

    def apply(self, update: Update, scale: float) -> tuple[Update, float]:
        if self.optimizer is not None:
            self._thaw_state()
            dense = update.dense() if isinstance(update, Compressed) else update
            if scale != 1.0:
                dense = np.multiply(dense, scale, dtype=dense.dtype)
            update, scale = self.optimizer.direction(dense), 1.0
        if any(not r.done for r in self._pins):
            out = self._spare()
            add_scaled(out, update, scale, base=self.data)  # out = data + scale * update
            self._spares.append((self.data, self._pins))
            del self._spares[:-SPARES]
            self.data, self._pins = out, []
            self.swaps += 1
        else:
            self._pins.clear()
            add_scaled(self.data, update, scale)
        self.version += 1
        return update, scale

    def _spare(self) -> np.ndarray:
        for i, (buffer, readers) in enumerate(self._spares):
            if all(r.done for r in readers):
                del self._spares[i]
                return buffer
        return np.empty_like(self.data)

    def _thaw_state(self) -> None:
        """Before a step writes the state in place: copy it if any snapshot still reads it
        (the snapshots keep the old arrays, the copies are this table's from now on)."""
        frozen, self._frozen_state = self._frozen_state, []
        if any(not r.done for r in frozen) and self.optimizer is not None:
            self.optimizer.state = {k: v.copy() for k, v in self.optimizer.state.items()}


def table_array(initial: np.ndarray) -> np.ndarray:
    """A private, C-contiguous, writable copy of an initial value."""
    return np.array(initial, copy=True, order="C")
