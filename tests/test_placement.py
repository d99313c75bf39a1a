"""Table placement: deterministic, complete, balanced, chunked."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from zps.client.placement import TableSpec, described, plan

F32 = np.dtype(np.float32)


def test_small_tables_stay_whole_and_balance_by_bytes() -> None:
    specs = {"a": TableSpec((1000,), F32), "b": TableSpec((600,), F32), "c": TableSpec((500,), F32)}
    layout = plan(specs, servers=2, chunk_bytes=1 << 20)
    assert all(len(p) == 1 and p[0].whole for p in layout.parts.values())
    assert layout.parts["a"][0].server != layout.parts["b"][0].server
    assert sorted(layout.bytes_per_server()) == [4000, 4400]


def test_large_table_is_split_into_row_ranges_across_servers() -> None:
    layout = plan({"w": TableSpec((1024, 1024), F32)}, servers=2, chunk_bytes=1 << 20)
    parts = layout.parts["w"]
    assert len(parts) == 4 and {p.server for p in parts} == {0, 1}
    assert [(p.start, p.stop) for p in parts] == [(0, 256), (256, 512), (512, 768), (768, 1024)]
    assert parts[0].key == "w[0:256]"


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.text("abcxyz", min_size=1, max_size=4),
                    st.lists(st.integers(0, 50), min_size=0, max_size=3), min_size=1, max_size=6),
    st.integers(1, 4),
    st.integers(16, 4096),
)
def test_every_row_is_placed_once_and_plans_agree(shapes, servers, chunk) -> None:
    specs = {n: TableSpec(tuple(s), F32) for n, s in shapes.items()}
    layout = plan(specs, servers, chunk)
    assert layout == plan(dict(reversed(list(specs.items()))), servers, chunk)
    for name, spec in specs.items():
        parts = layout.parts[name]
        rows = spec.shape[0] if spec.shape else 1
        assert parts[0].start == 0 and parts[-1].stop == rows
        assert all(a.stop == b.start for a, b in itertools.pairwise(parts))
        assert all(0 <= p.server < servers for p in parts)
        assert len({p.key for p in parts}) == len(parts)


@settings(max_examples=100, deadline=None)
@given(shapes=st.lists(st.lists(st.integers(1, 40), min_size=0, max_size=3), min_size=1,
                       max_size=6),
       servers=st.integers(1, 4), chunk=st.integers(16, 2048))
def test_the_layout_the_servers_describe_is_the_layout_planned(
        shapes: list[list[int]], servers: int, chunk: int) -> None:
    """A client that never called init rebuilds every worker's placement from what each
    server says it holds."""
    specs = {f"t{i}": TableSpec(tuple(s), F32 if i % 2 else np.dtype(np.float64))
             for i, s in enumerate(shapes)}
    layout = plan(specs, servers, chunk)
    told: list[list[dict[str, object]]] = [[] for _ in range(servers)]
    for name, parts in layout.parts.items():
        rest = list(specs[name].shape[1:])
        for p in parts:
            shape = list(specs[name].shape) if p.whole else [p.stop - p.start, *rest]
            told[p.server].append({"name": p.key, "kind": "dense", "shape": shape,
                                   "dtype": specs[name].dtype.name})
    told[0].append({"name": "rows", "kind": "rows", "shape": [None, 4], "dtype": "float32"})
    found = described(told)
    assert dict(found.specs) == specs
    assert {n: set(p) for n, p in found.parts.items()} == {
        n: set(p) for n, p in layout.parts.items()}
