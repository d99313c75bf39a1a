"""Row tables without sockets: the id index, initial rows, optimizers, admission,
eviction, and splitting batches over servers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zps.store.errors import BadIds, BadRowSpec
from zps.store.idindex import IdIndex, mix64
from zps.store.rowinit import initial_rows, parse_init, table_seed
from zps.store.rowplace import batch, shard_of
from zps.store.rows import RowTable, parse_row_spec

int64s = st.integers(-(2**63), 2**63 - 1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["insert", "remove", "lookup"]),
                          st.lists(st.integers(-40, 40) | int64s, max_size=30)), max_size=40))
def test_the_id_index_agrees_with_a_dict(script: list[tuple[str, list[int]]]) -> None:
    index, model = IdIndex(), {}
    next_slot = 0
    for kind, raw in script:
        ids = np.array(sorted(set(raw)), np.int64)
        if kind == "insert":
            new = ids[[i not in model for i in ids.tolist()]]
            slots = np.arange(next_slot, next_slot + new.size, dtype=np.int64)
            next_slot += new.size
            index.insert(new, slots)
            model.update(zip(new.tolist(), slots.tolist(), strict=True))
        elif kind == "remove":
            got = index.remove(ids)
            assert got.tolist() == [model.pop(i, -1) for i in ids.tolist()]
        assert index.lookup(ids).tolist() == [model.get(i, -1) for i in ids.tolist()]
        assert len(index) == len(model)
    keys, slots = index.items()
    assert dict(zip(keys.tolist(), slots.tolist(), strict=True)) == model


def test_the_id_index_takes_a_million_ids_in_batches() -> None:
    rng = np.random.default_rng(0)
    ids = np.unique(rng.integers(-(2**63), 2**63 - 1, 1_000_000, dtype=np.int64))
    index = IdIndex()
    for chunk in np.array_split(ids, 10):
        index.insert(chunk, np.arange(chunk.size, dtype=np.int64))
    assert len(index) == ids.size and (index.lookup(ids) >= 0).all()
    assert (index.lookup(ids[:1000] ^ 1) >= 0).sum() < 10  # (neighbours are other ids)


SHARDS = [0, 2, 2, 0, 0, 0]  # where ids 0, 1, 2, 3, -7 and 2**62 live on 3 servers


def test_the_mixing_hash_is_fixed() -> None:
    """Every client and server must place ids alike, today and after an upgrade."""
    assert mix64(np.array([0, 1, -1], np.int64)).tolist() == [
        0, 6238072747940578789, 13029008266876403067]
    assert shard_of(np.array([0, 1, 2, 3, -7, 2**62], np.int64), 3).tolist() == SHARDS


def test_initial_rows_are_a_function_of_table_and_id() -> None:
    init = parse_init("normal:0.5")
    ids = np.arange(-50_000, 50_000, dtype=np.int64)
    a = initial_rows(init, table_seed("user"), ids, 16, np.dtype(np.float32))
    b = initial_rows(init, table_seed("user"), ids[::-1].copy(), 16, np.dtype(np.float32))
    np.testing.assert_array_equal(a, b[::-1])  # the same row whatever else is asked
    assert abs(a.mean()) < 0.01 and abs(a.std() - 0.5) < 0.01
    other = initial_rows(init, table_seed("item"), ids, 16, np.dtype(np.float32))
    assert not np.allclose(a, other)
    u = initial_rows(parse_init("uniform:2"), 7, ids, 4, np.dtype(np.float64))
    assert u.min() >= -2 and u.max() <= 2 and abs(u.mean()) < 0.02
    assert not initial_rows(parse_init("zeros"), 7, ids[:3], 4, np.dtype(np.float32)).any()


@pytest.mark.parametrize("text", ["normal", "normal:-1", "uniform:nan", "ones", "zeros:1"])
def test_bad_inits_are_refused(text: str) -> None:
    with pytest.raises(BadRowSpec, match="zeros, normal:STD or uniform:A"):
        parse_init(text)


def table(**spec: Any) -> RowTable:
    return RowTable("t", parse_row_spec({"dim": 3, **spec}))


def test_pulls_never_create_rows_and_pushes_store_them() -> None:
    rows = table(init="normal:0.1")
    ids = np.array([5, -9, 2**62], np.int64)
    before = rows.read(ids)
    assert len(rows) == 0
    rows.apply(ids[:2], np.ones((2, 3), np.float32), 1.0, now=1.0)
    after = rows.read(ids)
    np.testing.assert_allclose(after[:2], before[:2] + 1, rtol=1e-6)
    np.testing.assert_array_equal(after[2], before[2])
    assert len(rows) == 2 and rows.describe()["rows"] == 2


def test_admission_stores_a_row_on_its_kth_push() -> None:
    rows = table(admit_after=3)
    ids = np.array([1, 2], np.int64)
    for _ in range(2):
        rows.apply(ids[:1], np.ones((1, 3), np.float32), 1.0, now=0.0)
    assert len(rows) == 0 and rows.describe()["pending"] == 1
    assert not rows.read(ids).any()  # before admission: the initial value
    rows.apply(ids, np.ones((2, 3), np.float32), 1.0, now=0.0)
    assert len(rows) == 1 and rows.read(ids)[0].tolist() == [1, 1, 1]  # the 3rd push counts
    assert rows.describe()["pending"] == 1 and rows.admitted == 1


def test_max_rows_evicts_the_least_recently_pushed() -> None:
    rows = table(max_rows=100)
    for step in range(30):
        ids = np.arange(step * 10, step * 10 + 10, dtype=np.int64)
        rows.apply(ids, np.ones((10, 3), np.float32), 1.0, now=float(step))
        assert len(rows) <= 100
    stored = rows.index.items()[0]
    assert stored.min() >= 190 and rows.evicted == 300 - len(rows)  # the oldest went first


def test_stale_rows_are_found_a_bounded_scan_at_a_time(monkeypatch) -> None:
    import zps.store.rows as rows_module

    monkeypatch.setattr(rows_module, "EVICT_SCAN", 64)
    rows = table(evict_after=10.0)
    rows.apply(np.arange(100, dtype=np.int64), np.ones((100, 3), np.float32), 1.0, now=0.0)
    rows.apply(np.arange(50, dtype=np.int64), np.ones((50, 3), np.float32), 1.0, now=20.0)
    found = [rows.stale(now=25.0) for _ in range(3)]
    assert [f.size for f in found][:2] == [14, 36]  # slots 50..63, then 64..99
    rows.remove(np.concatenate(found))
    assert len(rows) == 50 and rows.read(np.array([99], np.int64)).tolist() == [[0, 0, 0]]


def dense_reference(name: str, settings: dict[str, float], grads: list[np.ndarray],
                    start: np.ndarray) -> np.ndarray:
    """One row's optimizer, written out plainly, over its own gradients."""
    w = start.astype(np.float64).copy()
    s1, s2 = np.zeros_like(w), np.zeros_like(w)
    lr = settings["lr"]
    for t, g in enumerate(grads, start=1):
        if name == "sgd":
            s1 = settings.get("momentum", 0) * s1 + g
            w -= lr * s1
        elif name == "adagrad":
            s1 += g * g
            w -= lr * g / (np.sqrt(s1) + 1e-10)
        elif name == "adam":
            s1 = 0.9 * s1 + 0.1 * g
            s2 = 0.999 * s2 + 0.001 * g * g
            w -= lr * (s1 / (1 - 0.9**t)) / (np.sqrt(s2 / (1 - 0.999**t)) + 1e-8)
        else:  # ftrl, beta 1, l1 0.01, l2 0
            sigma = (np.sqrt(s2 + g * g) - np.sqrt(s2)) / lr
            s1 += g - sigma * w
            s2 += g * g
            w = np.where(np.abs(s1) <= 0.01, 0,
                         (np.sign(s1) * 0.01 - s1) / ((1 + np.sqrt(s2)) / lr))
    return w


@pytest.mark.parametrize(("name", "extra"), [
    ("sgd", {"momentum": 0.9}), ("sgd", {}), ("adagrad", {}), ("adam", {}), ("ftrl", {"l1": 0.01}),
])
def test_row_optimizers_match_a_dense_reference_on_the_touched_rows(
        name: str, extra: dict[str, float]) -> None:
    settings = {"lr": 0.1, **extra}
    rows = RowTable("t", parse_row_spec({"dim": 4, "dtype": "float64",
                                         "optimizer": {"name": name, **settings}}))
    rng = np.random.default_rng(3)
    pushed: dict[int, list[np.ndarray]] = {}
    for step in range(20):
        ids = np.unique(rng.integers(0, 12, 5)).astype(np.int64)
        grads = rng.standard_normal((ids.size, 4))
        rows.apply(ids, grads, 1.0, now=float(step))
        for i, g in zip(ids.tolist(), grads, strict=True):
            pushed.setdefault(i, []).append(g)
    ids = np.array(sorted(pushed), np.int64)
    got = rows.read(ids)
    for row, i in zip(got, ids.tolist(), strict=True):
        np.testing.assert_allclose(row, dense_reference(name, settings, pushed[i],
                                                        np.zeros(4)), rtol=1e-9, atol=1e-12)
    untouched = np.array([100], np.int64)
    assert not rows.read(untouched).any()


@pytest.mark.parametrize("spec", [
    {"dim": 0}, {"dim": True}, {"dim": 4, "dtype": "int64"}, {"dim": 4, "admit_after": 0},
    {"dim": 4, "evict_after": -1}, {"dim": 4, "max_rows": 0},
    {"dim": 4, "optimizer": {"name": "rmsprop", "lr": 1}},
    {"dim": 4, "optimizer": {"name": "adam", "lr": 0}},
    {"dim": 4, "optimizer": {"name": "ftrl", "lr": 1, "l1": -1}},
    {"dim": 4, "optimizer": {"name": "sgd", "lr": 1, "bogus": 2}},
])
def test_bad_row_specs_are_refused(spec: dict[str, Any]) -> None:
    with pytest.raises(BadRowSpec):
        parse_row_spec(spec)


def test_bad_updates_and_full_tables_change_nothing() -> None:
    rows = table(admit_after=2)
    with pytest.raises(BadIds):
        rows.apply(np.array([1, 2], np.int64), np.ones((2, 4), np.float32), 1.0, now=0.0)
    rows._used = 2**31 - 1  # as if the table held that many slots: one more row fits
    with pytest.raises(BadIds, match="2\\*\\*31"):
        rows.apply(np.array([1, 2], np.int64), np.ones((2, 3), np.float32), 1.0, now=0.0)
    assert rows.sketch is not None
    assert len(rows) == 0 and rows.version == 0 and rows.sketch.counted == 0


def test_push_counts_do_not_wrap() -> None:
    rows = table(optimizer={"name": "adam", "lr": 0.1})
    ids = np.array([3], np.int64)
    rows.apply(ids, np.ones((1, 3), np.float32), 1.0, now=0.0)
    rows.pushes[:] = 2**31 - 1  # past int32
    rows.apply(ids, np.ones((1, 3), np.float32), 1.0, now=1.0)
    assert rows.pushes[0] == 2**31 and np.isfinite(rows.read(ids)).all()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-(2**63), 2**63 - 1) | st.integers(-5, 5), max_size=60),
       st.integers(1, 7))
def test_splitting_and_merging_loses_duplicates_or_reorders_nothing(raw: list[int],
                                                                     servers: int) -> None:
    ids = np.array(raw, np.int64).reshape(-1)
    split = batch(ids, servers)
    owners = shard_of(split.unique, servers)
    for server, part in enumerate(split.parts):
        assert (owners[part] == server).all()
    assert sorted(np.concatenate(split.parts).tolist()) == list(range(split.unique.size))
    rows = [split.unique[part].astype(np.float64)[:, None] * [1, -1] for part in split.parts]
    merged = split.merged(rows, 2, np.dtype(np.float64))
    np.testing.assert_array_equal(merged[:, 0], ids.astype(np.float64))
    updates = np.ones((ids.size, 2))
    summed = split.summed(updates)
    counts = {v: raw.count(v) for v in set(raw)}
    assert summed[:, 0].tolist() == [counts[v] for v in split.unique.tolist()]


def test_ctr_data_is_deterministic_and_auc_matches_sklearn() -> None:
    from sklearn.metrics import roc_auc_score

    from zps.jobs.ctrdata import auc, make_ctr

    a, b = make_ctr(train=2000, test=500, seed=3), make_ctr(train=2000, test=500, seed=3)
    np.testing.assert_array_equal(a.train_ids, b.train_ids)
    assert a.train_ids.dtype == np.int64 and a.train_ids.shape == (2000, 26)
    assert 0.1 < a.train_labels.mean() < 0.4
    scores = np.round(a.test_logits, 1)  # with ties
    assert auc(a.test_labels, scores) == pytest.approx(roc_auc_score(a.test_labels, scores))
