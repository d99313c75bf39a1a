"""Tables, the change log, copy-on-write under zero-copy sends, and request dedup."""

from __future__ import annotations

import numpy as np
import pytest

from zps.store import Store, UnknownTable, freeze_snapshot, make_optimizer, take_snapshot
from zps.store.errors import TableConflict, TableMismatch


class FakeSend:
    """A zero-copy send still reading (or done reading) a buffer."""

    def __init__(self, done: bool) -> None:
        self.done = done


def test_apply_numbers_changes_and_bumps_versions() -> None:
    store = Store()
    store.create("w", np.zeros(3, np.float32))
    seen = []
    store.subscribe(seen.append)
    c1 = store.apply("w", np.ones(3, np.float32))
    c2 = store.apply("w", np.ones(3, np.float32), scale=0.5)
    np.testing.assert_array_equal(store.get("w").data, [1.5, 1.5, 1.5])
    assert (c1.seq, c2.seq, store.seq) == (2, 3, 3)  # the create was change 1
    assert store.get("w").version == 2 and seen == [c1, c2]
    assert store.table_changes("w", 0) == [c1, c2] and store.table_changes("w", 2) == []
    store.create("v", np.ones(2))
    created = seen[-1]
    assert (created.kind, created.seq, created.table, store.seq) == ("create", 4, "v", 4)
    store.get("v").data += 1  # subscribers keep the initial value, not the live table
    np.testing.assert_array_equal(created.update, [1, 1])


def test_create_copies_the_initial_value() -> None:
    store = Store()
    initial = np.zeros(2, np.float32)
    store.create("w", initial)
    initial[:] = 5
    np.testing.assert_array_equal(store.get("w").data, [0, 0])


def test_unknown_table_is_a_domain_error() -> None:
    with pytest.raises(UnknownTable, match="call init"):
        Store().get("nope")


def test_table_checks_name_the_mismatch() -> None:
    table = Store().create("w", np.zeros((2, 3), np.float32))
    with pytest.raises(TableMismatch, match=r"float64\[3\]"):
        table.check((3,), "float64", "push")
    with pytest.raises(TableConflict):
        table.check((2, 2), "float32", "init")
    table.check((2, 3), "float32", "push")


def test_update_writes_elsewhere_while_a_send_reads_the_buffer() -> None:
    store = Store()
    table = store.create("w", np.zeros(4, np.float32))
    sent = table.data
    table.pin(FakeSend(done=False))
    store.apply("w", np.ones(4, np.float32))
    np.testing.assert_array_equal(sent, 0)  # the in-flight reply still sees the old value
    np.testing.assert_array_equal(table.data, 1)
    assert table.swaps == 1
    current = table.data
    table.pin(FakeSend(done=True))
    store.apply("w", np.ones(4, np.float32))
    assert table.data is current  # nothing reading: updated in place


def test_double_buffering_reuses_the_spare_once_its_readers_are_done() -> None:
    """Regression for the whole-table copy per update under zero-copy replies: a busy
    buffer is swapped with a spare (one pass, no allocation once the spare exists)."""
    table = Store().create("w", np.zeros(8, np.float32))
    first, second = FakeSend(done=False), FakeSend(done=False)
    a = table.data
    table.pin(first)
    table.apply(np.ones(8, np.float32), 1.0)
    b = table.data
    table.pin(second)
    first.done = True  # a's reader finished: a is the spare now
    table.apply(np.ones(8, np.float32), 2.0)
    assert table.data is a and table.swaps == 2
    np.testing.assert_array_equal(table.data, 3)
    np.testing.assert_array_equal(b, 1)  # still read by ``second``: untouched


def test_frozen_snapshot_copies_nothing_and_stays_unchanged() -> None:
    store = Store()
    store.create("w", np.zeros(4, np.float32))
    store.create("m", np.zeros(3), make_optimizer({"name": "adam", "lr": 0.1}))
    store.apply("m", np.ones(3))
    hold = FakeSend(done=False)
    frozen = freeze_snapshot(store, 1, {}, hold)
    copied = take_snapshot(store, 1, {})
    w = frozen.tables[0].data
    assert w is store.get("w").data  # no copy
    for _ in range(3):
        store.apply("w", np.ones(4, np.float32))
        store.apply("m", np.ones(3))
    assert frozen == copied  # every array, optimizer state included, as it was
    hold.done = True
    store.apply("w", np.ones(4, np.float32))  # released: updates may reuse the buffers


def test_change_log_is_bounded() -> None:
    store = Store(log_entries=3)
    store.create("w", np.zeros(1))
    for _ in range(5):
        store.apply("w", np.ones(1))
    assert store.table_changes("w", 0) is None  # the log no longer reaches back
    assert [c.version for c in store.table_changes("w", 2) or []] == [3, 4, 5]


def test_finished_readers_are_forgotten() -> None:
    table = Store().create("w", np.zeros(2))
    for _ in range(100):
        table.pin(FakeSend(done=True))
    assert len(table._pins) == 1


def test_overlapping_frozen_snapshots_each_keep_the_optimizer_state() -> None:
    """Regression (review): the optimizer state had one reader slot, so when a later
    snapshot (a standby's transfer) ended before an earlier one (a checkpoint), the next
    step changed the moments the earlier one was still reading."""
    store = Store()
    store.create("m", np.zeros(3), make_optimizer({"name": "adam", "lr": 0.1}))
    store.apply("m", np.ones(3))
    first, second = FakeSend(done=False), FakeSend(done=False)
    frozen = freeze_snapshot(store, 1, {}, first)
    expected = take_snapshot(store, 1, {})
    freeze_snapshot(store, 1, {}, second)
    second.done = True
    store.apply("m", np.ones(3))
    assert frozen == expected
