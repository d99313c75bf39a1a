"""Tables, the change log, copy-on-write under zero-copy sends, and request dedup."""

from __future__ import annotations

import numpy as np
import pytest

from zps.errors import ProtocolError
from zps.store import DedupWindow, Store


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


def test_unknown_table_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError) as info:
        Store().get("nope")
    assert info.value.code == "unknown_table"


def test_update_copies_on_write_while_a_send_reads_the_buffer() -> None:
    store = Store()
    table = store.create("w", np.zeros(4, np.float32))
    sent = table.data
    table.pin(FakeSend(done=False))
    store.apply("w", np.ones(4, np.float32))
    np.testing.assert_array_equal(sent, 0)  # the in-flight reply still sees the old value
    np.testing.assert_array_equal(table.data, 1)
    current = table.data
    table.pin(FakeSend(done=True))
    store.apply("w", np.ones(4, np.float32))
    assert table.data is current  # nothing reading: updated in place


def test_change_log_is_bounded() -> None:
    store = Store(log_entries=3)
    store.create("w", np.zeros(1))
    for _ in range(5):
        store.apply("w", np.ones(1))
    assert store.table_changes("w", 0) is None  # the log no longer reaches back
    assert [c.version for c in store.table_changes("w", 2) or []] == [3, 4, 5]


def test_dedup_window() -> None:
    dedup = DedupWindow(per_client=2)
    dedup.record("a", 1)
    assert dedup.seen("a", 1) and not dedup.seen("b", 1)
    dedup.record("a", 2)
    dedup.record("a", 3)
    assert not dedup.seen("a", 1) and dedup.seen("a", 3)


def test_finished_readers_are_forgotten() -> None:
    table = Store().create("w", np.zeros(2))
    for _ in range(100):
        table.pin(FakeSend(done=True))
    assert len(table._readers) == 1
