"""Where each table lives: whole tables balanced by bytes, large ones split into row ranges.

Every worker computes the same layout from the same table shapes, server count and chunk
size, so push and pull go straight to the owning server without asking anyone.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

# Characters a user's table name may not hold: the part keys use them.
RESERVED = "[]"


@dataclass(frozen=True, slots=True)
class Part:
    """A row range ``[start, stop)`` of table ``table``, stored under ``key`` on ``server``."""

    table: str
    key: str
    server: int
    start: int
    stop: int
    whole: bool
    nbytes: int


@dataclass(frozen=True, slots=True)
class TableSpec:
    """Shape and dtype of one logical table."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass(frozen=True, slots=True)
class Layout:
    """The placement of every table of a job across ``servers`` servers."""

    specs: Mapping[str, TableSpec]
    parts: Mapping[str, tuple[Part, ...]]
    servers: int

    def parts_of(self, names: list[str]) -> Iterator[Part]:
        for name in names:
            yield from self.parts[name]

    def bytes_per_server(self) -> list[int]:
        load = [0] * self.servers
        for parts in self.parts.values():
            for part in parts:
                load[part.server] += part.nbytes
        return load


def plan(
    specs: Mapping[str, TableSpec], servers: int, chunk_bytes: int, keep: Layout | None = None
) -> Layout:
    """Place ``specs`` on ``servers`` servers; tables above ``chunk_bytes`` become row parts.

    Tables already placed in ``keep`` stay where they are (a later ``init`` never moves
    them); the others go biggest first, each piece to the least loaded server (lowest
    index on ties), so the result depends only on the inputs and is the same on every
    worker that makes the same ``init`` calls.
    """
    parts: dict[str, tuple[Part, ...]] = dict(keep.parts) if keep else {}
    load = keep.bytes_per_server() if keep else [0] * servers
    fresh = [n for n in specs if n not in parts]
    for name in sorted(fresh, key=lambda n: (-specs[n].nbytes, n)):
        spec = specs[name]
        pieces = []
        for start, stop in _row_ranges(spec, chunk_bytes):
            whole = start == 0 and stop == (spec.shape[0] if spec.shape else 1)
            nbytes = spec.nbytes if whole else spec.nbytes // spec.shape[0] * (stop - start)
            server = min(range(servers), key=lambda s: (load[s], s))
            load[server] += nbytes
            key = name if whole else f"{name}[{start}:{stop}]"
            pieces.append(Part(name, key, server, start, stop, whole, nbytes))
        parts[name] = tuple(pieces)
    return Layout({**(keep.specs if keep else {}), **specs}, parts, servers)


def _row_ranges(spec: TableSpec, chunk_bytes: int) -> list[tuple[int, int]]:
    rows = spec.shape[0] if spec.shape else 1
    if not spec.shape or spec.nbytes <= chunk_bytes or rows < 2:
        return [(0, rows)]
    count = min(rows, math.ceil(spec.nbytes / chunk_bytes))
    bounds = [rows * i // count for i in range(count + 1)]
    return list(itertools.pairwise(bounds))


def described(per_server: list[list[dict[str, Any]]]) -> Layout:
    """The layout of the dense tables the servers hold, from what each describes (its
    ``tables`` answer, server by server in the client's order): a part ``w[0:500]`` on
    server 1 is rows 0..500 of ``w``. For a client that never called ``init``."""
    pieces: dict[str, list[tuple[int, int, int, str, list[int]]]] = {}
    dtypes: dict[str, np.dtype] = {}
    for server, entries in enumerate(per_server):
        for entry in entries:
            if entry.get("kind") != "dense":
                continue
            key, shape = str(entry["name"]), [int(n) for n in entry["shape"]]
            table, _, span = key.partition("[")
            start, stop = ((int(a) for a in span.rstrip("]").split(":")) if span
                           else (0, shape[0] if shape else 1))
            pieces.setdefault(table, []).append((start, stop, server, key, shape))
            dtypes[table] = np.dtype(str(entry["dtype"]))
    specs: dict[str, TableSpec] = {}
    parts: dict[str, tuple[Part, ...]] = {}
    for table, found in pieces.items():
        found.sort(key=lambda piece: piece[0])
        rest = found[0][4][1:]
        rows = sum(piece[1] - piece[0] for piece in found)
        spec = TableSpec((rows, *rest) if found[0][4] else (), dtypes[table])
        row_bytes = spec.nbytes // max(1, rows)
        specs[table] = spec
        parts[table] = tuple(Part(table, key, server, start, stop, key == table,
                                  row_bytes * (stop - start) if spec.shape else spec.nbytes)
                             for start, stop, server, key, _ in found)
    return Layout(specs, parts, len(per_server))
