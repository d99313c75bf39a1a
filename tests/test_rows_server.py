"""Row tables with real sockets: several workers and servers, every consistency mode,
a standby, failover, checkpoints, and bad input refused with nothing changed."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

import zps
from zps.protocol import Op, Request, TensorMeta, decode_reply, encode_request
from zps.store import latest_checkpoint

from .conftest import ServerThread, wait_for
from .test_client_server import raw_dealer


def rows_state(server: ServerThread) -> dict[str, Any]:
    """Every row table's stored ids, values, metadata and optimizer state, as bytes."""
    def read() -> dict[str, Any]:
        from zps.store.rowsnap import row_state

        return {t.name: {k: a.tobytes() for k, a in row_state(t).arrays.items()} | {
            "version": t.version} for t in server.server.core.store.row_tables()}
    return server.run(read)


def test_two_workers_two_servers_async_sum_exactly(start_server) -> None:
    a, b = start_server(mode="async"), start_server(mode="async")
    servers = [a.address, b.address]
    rng = np.random.default_rng(0)
    ids = [rng.integers(-(2**40), 2**40, (40, 3)).astype(np.int64) for _ in range(6)]
    expected: dict[int, float] = {}

    def work(chunks: list[np.ndarray]) -> None:
        with zps.Client(servers) as ps:
            ps.init_rows("item", dim=2, init="zeros")
            for chunk in chunks:
                ps.push_rows("item", chunk, np.ones((*chunk.shape, 2), np.float32))

    for chunk in ids:
        for i in chunk.reshape(-1).tolist():
            expected[i] = expected.get(i, 0.0) + 1.0
    threads = [threading.Thread(target=work, args=(ids[k::2],)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    with zps.Client(servers) as ps:  # never called init_rows: it asks the servers
        keys = np.array(sorted(expected), np.int64)
        got = ps.pull_rows("item", keys)
        np.testing.assert_array_equal(got[:, 0], [expected[k] for k in keys.tolist()])
        stats = ps.stats()
    counts = [next(t["rows"] for t in s["tables"] if t["name"] == "item") for s in stats]
    assert sum(counts) == len(expected) and min(counts) > 0  # spread over both servers


def test_sync_rounds_average_rows_over_the_workers(start_server) -> None:
    """A worker that did not touch a row counts as zero, as in data-parallel SGD."""
    servers = [start_server(mode="sync", workers=2).address,
               start_server(mode="sync", workers=2).address]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            with zps.Client(servers, client_id=f"w{index}") as ps:
                ps.init_rows("u", dim=1, init="zeros")
                ids = np.array([1, 2] if index == 0 else [2, 3], np.int64)
                results[index] = ps.push_pull_rows("u", ids, np.full((2, 1), 4.0),
                                                   pull_ids=np.array([1, 2, 3, 4], np.int64))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(results) == 2
    for got in results.values():
        np.testing.assert_array_equal(got[:, 0], [2.0, 4.0, 2.0, 0.0])


def test_row_optimizer_admission_and_ssp(start_server) -> None:
    server = start_server(mode="ssp:1")
    with zps.Client([server.address]) as ps:
        ps.init_rows("f", dim=3, init="zeros", admit_after=2,
                     optimizer={"name": "adagrad", "lr": 0.5})
        ps.init_rows("f", dim=3, init="zeros", admit_after=2,
                     optimizer={"name": "adagrad", "lr": 0.5})  # idempotent
        with pytest.raises(zps.ShapeMismatchError, match="does not match"):
            ps.init_rows("f", dim=4)
        ps.push_rows("f", [7], np.ones((1, 3)))
        assert not ps.pull_rows("f", [7]).any()  # counted, not stored yet
        ps.push_rows("f", [7], np.ones((1, 3)))
        np.testing.assert_allclose(ps.pull_rows("f", [7]), -0.5, rtol=1e-5)
        table = next(t for t in ps.tables() if t["name"] == "f")
        assert table["rows"] == 1 and table["spec"]["optimizer"]["name"] == "adagrad"


def test_bad_row_input_is_refused_and_changes_nothing(start_server) -> None:
    server = start_server(mode="async")
    with zps.Client([server.address]) as ps:
        ps.init_rows("t", dim=2, init="zeros")
        with pytest.raises(zps.ShapeMismatchError, match="int64"):
            ps.pull_rows("t", np.array([1.5]))
        with pytest.raises(zps.ShapeMismatchError, match="shape"):
            ps.push_rows("t", [1, 2], np.ones((3, 2)))
    sock = raw_dealer(server.address)
    try:
        def ask(tensors: list[tuple[str, np.ndarray]], op: Op = Op.PUSH_ROWS) -> Any:
            metas = tuple(TensorMeta(n, a.dtype.name, a.shape, a.nbytes) for n, a in tensors)
            sock.send_multipart(encode_request(Request(
                op, "raw", 5, metas, ("t",), {}, tuple(a for _, a in tensors), watermark=5)))
            return decode_reply(sock.recv_multipart())

        bad = [
            [("ids", np.array([1.0, 2.0])), ("updates", np.ones((2, 2), np.float32))],
            [("ids", np.array([1, 2])), ("updates", np.ones((3, 2), np.float32))],
            [("ids", np.array([1, 2])), ("updates", np.ones((2, 5), np.float32))],
            [("updates", np.ones((2, 2), np.float32)), ("ids", np.array([1, 2]))],
            [("ids", np.array([[1, 2]]))],
        ]
        codes = [ask(t, Op.PULL_ROWS if len(t) == 1 else Op.PUSH_ROWS).error[0] for t in bad]
        assert codes == ["bad_dtype", "bad_shape", "bad_shape", "bad_header", "bad_dtype"]
    finally:
        sock.close(linger=0)
    assert server.run(lambda: len(server.server.core.store.rows("t"))) == 0


def test_a_standby_holds_the_same_rows_and_takes_over(start_server) -> None:
    primary = start_server(mode="async")
    with zps.Client([primary.address]) as ps:
        ps.init_rows("e", dim=4, init="normal:0.1", optimizer={"name": "adam", "lr": 0.01},
                     admit_after=2, max_rows=50)
        rng = np.random.default_rng(1)
        for _ in range(5):  # before the standby: it comes by snapshot
            ids = rng.integers(0, 80, 30).astype(np.int64)
            ps.push_rows("e", ids, rng.standard_normal((30, 4)))
    standby = start_server(mode="async", standby_of=primary.address)
    with zps.Client([primary.address], standbys=[standby.address]) as ps:
        for _ in range(10):  # then by the stream
            ids = rng.integers(0, 80, 30).astype(np.int64)
            ps.push_rows("e", ids, rng.standard_normal((30, 4)))
        wait_for(lambda: rows_state(standby) == rows_state(primary), what="the same rows")
        before = ps.pull_rows("e", np.arange(80))
        primary.stop()
        for _ in range(2):  # (twice: admitted by now if it was still being counted)
            ps.push_rows("e", [3], np.ones((1, 4)))  # answered by the new primary
        after = ps.pull_rows("e", np.arange(80))
    changed = np.flatnonzero((after != before).any(axis=1))
    assert changed.tolist() == [3]


def test_checkpoints_restore_rows_counts_and_recency(start_server, tmp_path: Path) -> None:
    server = start_server(mode="async", checkpoint_dir=str(tmp_path))
    with zps.Client([server.address]) as ps:
        ps.init_rows("c", dim=2, init="uniform:1", admit_after=2,
                     optimizer={"name": "ftrl", "lr": 0.1, "l1": 0.01})
        for step in range(4):
            ps.push_rows("c", np.arange(step, step + 10), np.ones((10, 2)))
    before = rows_state(server)
    server.stop()
    assert latest_checkpoint(tmp_path) is not None
    restored = start_server(mode="async", restore=str(tmp_path))
    assert rows_state(restored) == before
    with zps.Client([restored.address]) as ps:
        assert ps.pull_rows("c", [0, 100]).shape == (2, 2)


def test_eviction_by_age_is_replicated(start_server) -> None:
    clock = [1000.0]
    primary = start_server(mode="async", heartbeat_interval=0.05)
    standby = start_server(mode="async", standby_of=primary.address)
    for server in (primary, standby):
        server.run(lambda s=server: setattr(s.server.core.state, "clock", lambda: clock[0]))
    with zps.Client([primary.address], heartbeat_interval=0.02) as ps:
        ps.init_rows("old", dim=1, init="zeros", evict_after=10.0)
        ps.push_rows("old", np.arange(20), np.ones((20, 1)))
        clock[0] += 5
        ps.push_rows("old", np.arange(5), np.ones((5, 1)))
        clock[0] += 7  # rows 5..19 are 12 s old, rows 0..4 7 s
        wait_for(lambda: primary.run(lambda: len(primary.server.core.store.rows("old"))) == 5,
                 what="the stale rows to go")
        wait_for(lambda: rows_state(standby) == rows_state(primary), what="the standby")
        np.testing.assert_array_equal(ps.pull_rows("old", [0, 19])[:, 0], [2.0, 0.0])


def test_row_ids_frames_are_validated_on_the_stream_too() -> None:
    from zps.protocol import DecodeError, Replicated, decode_stream, encode_change

    ids, updates = np.array([1, 2], np.int64), np.ones((2, 3), np.float32)
    change = Replicated(1, 1, "t", 1, "rows", 1.0, (), {"now": 5.0}, None, None,
                        (ids, updates), (TensorMeta.of("ids", ids), TensorMeta.of("updates",
                                                                                  updates)))
    got = decode_stream([bytes(memoryview(f)) for f in encode_change(change)])
    assert isinstance(got, Replicated) and got.row_arrays()["ids"].tolist() == [1, 2]
    wrong = Replicated(1, 1, "t", 1, "rows", 1.0, (), {}, None, None, (updates, ids),
                       (TensorMeta.of("updates", updates), TensorMeta.of("ids", ids)))
    with pytest.raises(DecodeError):
        decode_stream(encode_change(wrong))
    assert zmq  # (imported for the raw dealer's context)


def _push_rows_until(address: str, standby: str, worker: int, steps: int,
                     acked: list[int], errors: list[BaseException]) -> None:
    """A worker adding 1 to the rows of its own ids (and a shared one) every step."""
    try:
        with zps.Client([address], standbys=[standby], timeout=5.0) as ps:
            ps.init_rows("k", dim=2, init="zeros")
            ids = np.array([-1, 1000 * worker + 1, 1000 * worker + 2, 2**62], np.int64)
            for _ in range(steps):
                ps.push_rows("k", ids, np.ones((4, 2), np.float32))
                acked[worker] += 1
    except BaseException as exc:  # reported by the test thread
        errors.append(exc)


def test_sigkill_the_primary_mid_stream_loses_no_row_update(tmp_path: Path) -> None:
    from zps.cli.cluster import LocalCluster

    with LocalCluster(tmp_path) as cluster:
        cluster.start_servers(1, ["--mode", "async", "--replication", "sync"])
        cluster.start_standbys(["--mode", "async"])
        primary, standby = cluster.addresses[0], cluster.standby_addresses[0]
        with zps.Client([primary], role="observer", heartbeat_interval=0) as probe:
            wait_for(lambda: probe.stats()[0]["replica"]["standby"], what="the standby")
        steps, acked, errors = 200, [0, 0], []
        threads = [threading.Thread(target=_push_rows_until, args=(
            primary, standby, w, steps, acked, errors)) for w in range(2)]
        for t in threads:
            t.start()
        wait_for(lambda: sum(acked) >= 120 or errors, what="pushes before the kill")
        cluster.kill_server(0)
        for t in threads:
            t.join(timeout=60)
        assert not errors and acked == [steps, steps], errors
        with zps.Client([standby], role="observer") as ps:
            got = ps.pull_rows("k", np.array([-1, 1, 2, 1001, 1002, 2**62], np.int64))
        np.testing.assert_array_equal(got[:, 0], [400, 200, 200, 200, 200, 400])


@pytest.mark.parametrize("codec", ["fp16", "int8"])
def test_row_updates_travel_compressed(start_server, codec: str) -> None:
    server = start_server(mode="async")
    updates = np.random.default_rng(2).standard_normal((500, 32)).astype(np.float32)
    ids = np.arange(500, dtype=np.int64) * 7919 - 10**6
    with zps.Client([server.address], codec=codec) as ps:
        ps.init_rows("z", dim=32, init="zeros")
        ps.push_rows("z", ids, updates)
        got = ps.pull_rows("z", ids)
        table = next(t for t in ps.stats()[0]["tables"] if t["name"] == "z")
    bound = 1e-3 if codec == "fp16" else np.abs(updates).max() / 127 * 1.01
    assert np.abs(got - updates).max() <= bound
    assert table["compression"] > 1.5  # fewer bytes than the float32 rows


def test_tables_lists_every_table_of_every_server(start_server) -> None:
    """Regression (review): tables() asked only the first server."""
    servers = [start_server(mode="async").address, start_server(mode="async").address]
    with zps.Client(servers, chunk_bytes=1 << 12) as ps:
        ps.init({"x": np.zeros(3), "y": np.zeros(4), "big": np.zeros((5000, 4), np.float32)})
        ps.init_rows("r", dim=1, init="zeros")
        ps.push_rows("r", np.arange(1000), np.ones((1000, 1)))
    with zps.Client(servers, role="observer") as other:  # knows nothing but the servers
        tables = {t["name"]: t for t in other.tables()}
    assert set(tables) == {"x", "y", "big", "r"}
    assert tables["big"]["shape"] == [5000, 4] and tables["r"]["rows"] == 1000


def test_big_row_batches_are_pulled_in_pieces_and_oversized_pushes_refused(
        start_server) -> None:
    """Regression (review): row calls were never size-checked or split, so a push over the
    server's limit was dropped without a reply and ended as ServerUnreachable after 90 s,
    and one huge pull built its whole reply in one turn of the server's loop."""
    from zps.protocol import Limits

    server = start_server(mode="async", limits=Limits(max_message_bytes=1 << 20))
    with zps.Client([server.address], chunk_bytes=1 << 16, timeout=5) as ps:
        ps.init_rows("b", dim=8, init="zeros")
        ids = np.arange(-20_000, 20_000, dtype=np.int64)  # 1.28 MB of rows
        ps.push_rows("b", ids[:10_000], np.ones((10_000, 8)))  # 320 KB: fits
        got = ps.pull_rows("b", ids)  # in pieces of 64 KiB
        assert got.shape == (40_000, 8) and got.sum() == 10_000 * 8
        got = ps.push_pull_rows("b", [5], np.ones((1, 8)), pull_ids=ids)
        assert got.sum() == 10_000 * 8 + 8
        with pytest.raises(zps.RejectedError, match="limit"):
            ps.push_rows("b", ids, np.ones((40_000, 8)))


def test_a_big_sync_round_of_rows_reaches_the_standby_in_pieces(start_server) -> None:
    """Regression (review): a sync round's row update (the union of every worker's rows)
    went out as one change larger than the standby accepts, and it read a fresh snapshot
    every round."""
    from zps.protocol import Limits

    limits = Limits(max_message_bytes=1 << 20)
    primary = start_server(mode="sync", workers=2, limits=limits, replication="async")
    standby = start_server(mode="sync", workers=2, limits=limits, standby_of=primary.address)
    wait_for(lambda: primary.run(lambda: primary.server.core.replica.standby is not None),
             what="the standby")

    def work(index: int) -> None:
        with zps.Client([primary.address], client_id=f"w{index}", chunk_bytes=1 << 18) as ps:
            ps.init_rows("big", dim=16, init="zeros")
            for _ in range(3):
                ids = np.arange(10_000, dtype=np.int64) + index * 10_000  # 640 KB each
                ps.push_rows("big", ids, np.ones((10_000, 16), np.float32))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    wait_for(lambda: rows_state(standby) == rows_state(primary), what="the standby")
    resyncs = standby.run(lambda: standby.server.core.replication_info()["resyncs"])
    assert resyncs == 1  # its first snapshot only
    assert standby.run(lambda: standby.server.core.rounds.bsp.closed("big")) == 3


def test_a_standby_promoted_between_the_pieces_of_a_round_applies_it_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (review): a standby applied each piece of a sync round's row update as it
    came; promoted before the last piece, it held part of the round and no record of its
    pushes, so the workers' retries applied the whole round again on top."""
    from dataclasses import replace

    import zps.server.rounds as rounds
    from zps.config import ServerConfig
    from zps.protocol import decode_stream, encode_change
    from zps.server.core import ServerCore
    from zps.server.publisher import _wire_change
    from zps.store.snapshot import take_snapshot

    from .test_core import Harness, ok

    monkeypatch.setattr(rounds, "ROW_PIECE", 64)  # 8 rows of dim 2 a piece
    primary = Harness(mode="sync", workers=1)
    primary.hello("w")
    ok(primary.send("w", Op.INIT_ROWS, names=("e",), spec={"dim": 2, "init": "zeros"}))
    standby = ServerCore(replace(ServerConfig(), mode="sync", workers=1,
                                 standby_of="tcp://127.0.0.1:1"), "sb")
    store = primary.core.store
    standby.install_snapshot(take_snapshot(store, primary.core.epoch,
                                           primary.core.extra_state()))
    stream: list[Any] = []
    store.subscribe(lambda c: stream.append(
        decode_stream([bytes(memoryview(f)) for f in encode_change(_wire_change(c, 1, {}))])))
    ids = np.arange(20, dtype=np.int64)
    push = {"ids": ids, "updates": np.ones((20, 2), np.float32)}
    ok(primary.send("w", Op.PUSH_ROWS, push, names=("e",)))
    assert [bool(c.meta.get("more")) for c in stream] == [True, True, False]
    for change in stream[:2]:  # the primary dies before the last piece goes out
        standby.apply_replicated(change)
    assert standby.received_seq == store.seq - 1
    assert standby.store.rows("e").version == 0  # nothing applied yet: held
    standby.promote(0.0)
    retry = Request(Op.PUSH_ROWS, "w", primary.rid["w"],
                    tuple(TensorMeta.of(n, a) for n, a in push.items()), ("e",), {},
                    tuple(push.values()), watermark=primary.rid["w"])
    ok(standby.handle("w", Request(Op.HELLO, "w", primary.rid["w"] + 1, (), (),
                                   {"role": "worker"}, ()), 10.0))
    standby.tick(20.0)  # past the promoted primary's wait for workers to come back
    standby.handle("w", retry, 20.0)
    assert (standby.store.rows("e").read(ids) == store.rows("e").read(ids)).all()
    assert (standby.store.rows("e").read(ids) == 1.0).all()


def test_pieces_of_a_row_change_are_applied_together_on_the_standby(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    import zps.server.rounds as rounds
    from zps.config import ServerConfig
    from zps.protocol import decode_stream, encode_change
    from zps.server.core import ServerCore
    from zps.server.publisher import _wire_change
    from zps.store.snapshot import take_snapshot

    from .test_core import Harness, ok

    monkeypatch.setattr(rounds, "ROW_PIECE", 64)
    primary = Harness(mode="sync", workers=2)
    primary.hello("a", "b")
    for w in ("a", "b"):
        ok(primary.send(w, Op.INIT_ROWS, names=("e",), spec={
            "dim": 2, "init": "normal:0.1", "optimizer": {"name": "adam", "lr": 0.01}}))
    standby = ServerCore(replace(ServerConfig(), mode="sync", workers=2,
                                 standby_of="tcp://127.0.0.1:1"), "sb")
    standby.install_snapshot(take_snapshot(primary.core.store, primary.core.epoch,
                                           primary.core.extra_state()))
    primary.core.store.subscribe(lambda c: standby.apply_replicated(decode_stream(
        [bytes(memoryview(f)) for f in encode_change(_wire_change(c, 1, {}))])))
    rng = np.random.default_rng(3)
    for _ in range(3):
        for w in ("a", "b"):
            ids = np.unique(rng.integers(0, 60, 30)).astype(np.int64)
            primary.send(w, Op.PUSH_ROWS, {"ids": ids, "updates": rng.standard_normal(
                (ids.size, 2)).astype(np.float32)}, names=("e",))
    ids = np.arange(60, dtype=np.int64)
    assert standby.received_seq == primary.core.store.seq
    assert standby.store.rows("e").version == primary.core.store.rows("e").version > 3
    assert (standby.store.rows("e").read(ids) == primary.core.store.rows("e").read(ids)).all()
    assert standby.rounds.bsp.closed("e") == 3


def test_pieces_fit_a_server_limit_below_chunk_bytes(start_server) -> None:
    """Regression: a pull answered in one piece over the server's limit was refused, and
    the push of a push_pull_rows was applied on the other server all the same."""
    from zps.protocol import Limits
    from zps.store.rowplace import shard_of

    servers = [start_server(mode="async", limits=Limits(max_message_bytes=1 << 20))
               for _ in range(2)]
    with zps.Client([s.address for s in servers]) as ps:
        ps.init_rows("t", dim=8, init="zeros")
        candidates = np.arange(200_000, dtype=np.int64)
        owner = shard_of(candidates, 2)
        big = candidates[owner == 0][:40_000]  # 1.28 MB of rows from server 0
        pushed = candidates[owner == 1][:3]
        got = ps.push_pull_rows("t", pushed, np.ones((3, 8)), pull_ids=big)
        assert got.shape == (40_000, 8)
        np.testing.assert_array_equal(ps.pull_rows("t", pushed), 1.0)  # applied once
        assert ps.pull_rows("t", big).shape == (40_000, 8)


def test_row_settings_given_as_numpy_values_and_defaults(start_server) -> None:
    server = start_server(mode="async")
    with zps.Client([server.address], timeout=1.0) as ps:
        ps.init_rows("a", dim=np.int64(4), dtype=np.dtype("float32"), admit_after=np.int32(1))
        ps.init_rows("b")  # dim 64 by default
        assert {t["name"]: t["shape"] for t in ps.tables()} == {"a": [None, 4],
                                                                "b": [None, 64]}
        with pytest.raises(zps.ConfigError, match="cannot send"):  # msgpack: no np.float32
            ps.init({"w": np.zeros(3, np.float32)},
                    optimizer={"name": "adam", "lr": np.float32(0.01)})
        ps.init_rows("c", dim=2)  # the client is not left with a request it cannot send
        assert ps.pull_rows("c", [1]).shape == (1, 2)


def test_bad_row_inputs_change_nothing_on_any_server(start_server) -> None:
    servers = [start_server(mode="async").address for _ in range(2)]
    with zps.Client(servers) as ps:
        ps.init({"x": np.zeros(3, np.float32)})  # lives on one server
        with pytest.raises(zps.ShapeMismatchError, match="dense table"):
            ps.init_rows("x", dim=2)
        assert [t["kind"] for t in ps.tables()] == ["dense"]  # no row table anywhere
        ps.init_rows("r", dim=2, init="zeros")
        for bad in (np.array([["1", "2"]]), np.array([[True, False]]), np.array([[1j, 2]])):
            with pytest.raises(zps.ShapeMismatchError, match="real numbers"):
                ps.push_rows("r", [5], bad)
        high = np.array([2**64 - 1, 2**63, 7], np.uint64)  # uint64 ids keep their bits
        ps.push_rows("r", high, np.ones((3, 2)))
        np.testing.assert_array_equal(ps.pull_rows("r", high.view(np.int64)), 1.0)
        np.testing.assert_array_equal(ps.pull_rows("r", [5]), 0.0)
