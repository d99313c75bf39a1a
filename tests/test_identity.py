"""Request identity (sans-IO): the ledger against a model that forgets nothing."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zps.store import APPLIED, NEW, RequestLedger, RequestWindowError

clients = st.sampled_from(["a", "b"])
tables = st.sampled_from(["w", "v", "u"])
steps = st.lists(st.tuples(st.sampled_from(["send", "finish", "pend", "apply", "drop"]),
                           clients, tables, st.integers(0, 6)), max_size=120)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_ledger_agrees_with_a_model_that_keeps_everything(script) -> None:
    """Clients send increasing ids, finish some, and carry their watermark; for every id
    at or above a client's watermark the ledger answers as a complete record would, and
    it keeps no applied id below it."""
    ledger = RequestLedger()
    model: dict[tuple[str, str, int], int] = {}
    next_id = {"a": 100, "b": 5000}
    unfinished: dict[str, list[int]] = {"a": [], "b": []}
    for kind, client, table, pick in script:
        ids = unfinished[client]
        if kind == "send" or not ids:
            next_id[client] += 1 + pick
            ids.append(next_id[client])
            continue
        rid = ids[pick % len(ids)]
        if kind == "finish":
            ids.remove(rid)
            continue
        ledger.advance(client, min(ids))  # the watermark every request carries
        status = ledger.status(client, table, rid)
        assert status == model.get((client, table, rid), NEW)
        if kind == "pend" and status == NEW:
            ledger.pending(client, table, rid, 1 + pick)
            model[(client, table, rid)] = 1 + pick
        elif kind == "apply" and status != APPLIED:
            ledger.applied(client, table, rid)
            model[(client, table, rid)] = APPLIED
        elif kind == "drop" and status > 0:
            ledger.discard(client, table, rid)
            del model[(client, table, rid)]
    for client, ids in unfinished.items():
        watermark = min(ids, default=next_id[client] + 1)
        ledger.advance(client, watermark)
        for (c, table, rid), status in model.items():
            if c == client and rid >= watermark:
                assert ledger.status(client, table, rid) == status
    restored = RequestLedger.restore(msgpack.unpackb(msgpack.packb(ledger.export())))
    for (client, table, rid), status in model.items():
        if status == APPLIED:  # a snapshot holds what is applied, never what is pending
            assert restored.status(client, table, rid) == APPLIED
        else:
            assert restored.status(client, table, rid) in (NEW, APPLIED)


def test_ids_below_the_watermark_count_as_done() -> None:
    ledger = RequestLedger()
    ledger.applied("a", "w", 10)
    ledger.advance("a", 20)
    assert ledger.status("a", "w", 10) == APPLIED
    assert ledger.status("a", "w", 15) == APPLIED  # finished: never applied again
    assert ledger.status("a", "w", 20) == NEW
    assert ledger.top("a") == 10 and ledger.top("b") == 0


def test_a_long_run_keeps_the_identity_state_small() -> None:
    """Regression: the old dedup window kept 4096 ids per (client, table), ~480 KiB each,
    so a long run's snapshot header passed 1 MiB and standbys could not catch up. 8
    clients x 16 tables x 10k pushes each now take a few KiB."""
    ledger = RequestLedger()
    for client in range(8):
        rid = 1000 * client
        for _ in range(10_000):
            rid += 1
            ledger.advance(f"c{client}", rid)  # one call in flight at a time
            for table in range(16):
                ledger.applied(f"c{client}", f"t{table}", rid)
    size = len(msgpack.packb(ledger.export()))
    assert size < 8 << 10, size


def test_window_bounds_what_a_client_may_leave_unfinished() -> None:
    ledger = RequestLedger(window=100)
    ledger.check(150, 50)
    with pytest.raises(RequestWindowError, match="too many unfinished"):
        ledger.check(151, 50)


@pytest.mark.parametrize("rows", [
    "x", [["a", -1, 0, []]], [["a", 1, 1, [["w", [1.5]]]]], [["a", 1, 1, [["w"]]]],
    [[1, 1, 1, []]], [["a", True, 1, []]],
])
def test_malformed_identity_state_is_refused(rows) -> None:
    with pytest.raises(ValueError):
        RequestLedger.restore(rows)
