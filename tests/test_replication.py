"""Hot standby, failover and checkpoints, with real sockets and real server processes."""

from __future__ import annotations

import logging
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq

import zps
import zps.server
from zps.cli.cluster import LocalCluster
from zps.protocol import Limits, Op
from zps.server import follower
from zps.store import latest_checkpoint, read_checkpoint

from .conftest import ROOT, ServerThread, python_env, run_cli, wait_for
from .test_client_server import raw_dealer, raw_request


def state(server: ServerThread) -> dict[str, Any]:
    """Every table's bits, version and optimizer state, and the change number."""
    def read() -> dict[str, Any]:
        core = server.server.core
        return {
            "seq": core.store.seq,
            "tables": {t.name: (t.data.tobytes(), t.version, t.optimizer.steps if t.optimizer
                                else 0, {k: v.tobytes() for k, v in
                                         (t.optimizer.state if t.optimizer else {}).items()})
                       for t in core.store},
        }
    return server.run(read)


def table_of(server: ServerThread, name: str) -> np.ndarray:
    return server.run(lambda: server.server.core.store.get(name).data.copy())


def seq(server: ServerThread) -> int:
    return server.run(lambda: server.server.core.store.seq)


def wait_attached(primary: ServerThread) -> None:
    """Until a standby is attached: from then on updates are acknowledged once it holds
    them (a test that stops the primary sooner may leave the standby with no copy)."""
    wait_for(lambda: primary.run(lambda: primary.server.core.replica.standby is not None),
             what="the standby to attach")


def caught_up(primary: ServerThread, standby: ServerThread) -> bool:
    return seq(standby) == seq(primary) and state(standby) == state(primary)


def train_a_little(address: str, steps: int, standbys: tuple[str, ...] = (),
                   codec: str = "none") -> None:
    rng = np.random.default_rng(steps)
    with zps.Client([address], standbys=standbys, codec=codec) as ps:
        ps.init({"w": np.zeros((40, 30), np.float32)})
        ps.init({"m": np.ones(7)}, optimizer={"name": "adam", "lr": 0.01})
        for _ in range(steps):
            ps.push({"w": rng.standard_normal((40, 30)), "m": rng.standard_normal(7)})


def test_standby_holds_a_bit_identical_copy(start_server) -> None:
    primary = start_server(mode="async")
    train_a_little(primary.address, 5)  # before the standby exists: it comes by snapshot
    standby = start_server(mode="async", standby_of=primary.address)
    wait_for(lambda: caught_up(primary, standby), what="the standby to catch up")
    train_a_little(primary.address, 20, codec="int8")  # then by the stream, compressed too
    wait_for(lambda: caught_up(primary, standby), what="the standby to follow")
    with zps.Client([primary.address], role="observer") as ps:
        stats = ps.stats()[0]
    assert stats["replica"]["standby"] is not None and stats["role"] == "primary"
    with zps.Client([standby.address], role="observer") as ps:
        info = ps.stats()[0]
    assert info["role"] == "standby" and info["replica"]["lag"] == 0


def test_a_standby_catches_up_after_a_long_run(start_server, monkeypatch) -> None:
    """Regression: after a long run (many clients x tables x pushes) the snapshot's dedup
    state passed the 1 MiB header cap; the standby dropped the reply without a log line and
    asked again forever, and with --replication sync every push then hung. The request
    identity stays small now, and a snapshot travels in bounded chunks (here a 12 MB table
    in chunks of 64 KiB)."""
    monkeypatch.setattr(follower, "CHUNK_BYTES", 64 << 10)
    limits = Limits(max_message_bytes=2 << 20)
    primary = start_server(mode="async", replication="sync", limits=limits)
    with zps.Client([primary.address], chunk_bytes=1 << 20, timeout=10) as ps:
        ps.init({"w": np.zeros((3000, 1000), np.float32)})
        ps.push({"w": np.ones((3000, 1000), np.float32)})

        def long_run() -> int:  # 8 clients x 16 tables x 10k pushes each
            ledger = primary.server.core.state.ledger
            for client in range(8):
                for rid in range(1, 10_001):
                    ledger.advance(f"c{client}", rid)
                    for table in range(16):
                        ledger.applied(f"c{client}", f"t{table}", rid)
            return len(msgpack.packb(ledger.export()))

        assert primary.run(long_run) < 64 << 10
        standby = start_server(mode="async", standby_of=primary.address, limits=limits)
        wait_for(lambda: caught_up(primary, standby), what="the standby to catch up")
        ps.push({"w": np.ones((3000, 1000), np.float32)})  # durable: acknowledged by both
        wait_for(lambda: caught_up(primary, standby), what="the standby to follow")
        assert (ps.pull()["w"] == 2.0).all()


def test_a_standby_refuses_requests_until_it_takes_over(start_server) -> None:
    primary = start_server(mode="async")
    train_a_little(primary.address, 1)
    standby = start_server(mode="async", standby_of=primary.address)
    wait_for(lambda: caught_up(primary, standby), what="the standby to catch up")
    sock = raw_dealer(standby.address)
    try:
        for rid, op in enumerate((Op.PULL, Op.PUSH, Op.INIT), start=1):
            kw: dict[str, Any] = ({"names": ("w",)} if op == Op.PULL else
                                  {"arrays": {"w": np.ones((40, 30), np.float32)}})
            reply = raw_request(sock, op, rid, **kw)
            assert reply.error is not None and reply.error[0] == "not_primary"
    finally:
        sock.close()
    assert caught_up(primary, standby)  # nothing changed on either


def test_sync_replication_acknowledges_only_what_the_standby_holds(start_server) -> None:
    primary = start_server(mode="async", replication="sync")
    standby = start_server(mode="async", standby_of=primary.address)
    wait_attached(primary)
    wait_for(lambda: standby.run(lambda: standby.server._follower.synced.is_set()),
             what="the standby to hold a snapshot")
    with zps.Client([primary.address], standbys=[standby.address]) as ps:
        ps.init({"w": np.zeros(1000, np.float32)})
        for _ in range(30):
            ps.push({"w": np.ones(1000)})
            assert seq(standby) >= seq(primary)  # acknowledged means held by the standby


def test_injected_pub_drops_are_detected_and_repaired(start_server) -> None:
    primary = start_server(mode="async", inject_pub_drops=7)
    standby = start_server(mode="async", standby_of=primary.address)
    train_a_little(primary.address, 40)
    wait_for(lambda: caught_up(primary, standby), what="the standby to repair its gaps")
    resyncs = standby.run(lambda: standby.server._follower.resyncs)
    assert resyncs >= 2  # the first snapshot, then at least one repair


def test_failover_in_process_keeps_every_acknowledged_push(start_server) -> None:
    primary = start_server(mode="async")
    standby = start_server(mode="async", standby_of=primary.address)
    wait_attached(primary)
    with zps.Client([primary.address], standbys=[standby.address]) as ps:
        ps.init({"w": np.zeros(64, np.float32)})
        for _ in range(10):
            ps.push({"w": np.ones(64)})
        primary.stop()  # heartbeats stop: the standby takes over within 0.5 s
        started = time.monotonic()
        ps.push({"w": np.ones(64)})
        took = time.monotonic() - started  # the watch, not a 30 s request timeout
        for _ in range(9):
            ps.push({"w": np.ones(64)})
        np.testing.assert_array_equal(ps.pull()["w"], 20)
        assert ps.stats()[0]["epoch"] == 2
    assert took < 5.0, took


def test_delta_pulls_start_afresh_after_a_failover(start_server) -> None:
    primary = start_server(mode="async", replication="async")
    standby = start_server(mode="async", standby_of=primary.address)
    with zps.Client([primary.address], standbys=[standby.address],
                    pull_codec="none") as ps:
        ps.init({"w": np.zeros(64, np.float32)})
        for _ in range(5):
            ps.push({"w": np.ones(64)})
            ps.pull()
        wait_for(lambda: caught_up(primary, standby), what="the standby to catch up")
        primary.stop()
        ps.push({"w": np.full(64, 2.0)})
        np.testing.assert_array_equal(ps.pull()["w"], table_of(standby, "w"))


def applied_ids(server: ServerThread, client: str) -> list[int]:
    """The request ids a snapshot of ``server`` would say ``client`` had applied."""
    rows = server.run(lambda: server.server.core.extra_state()["identity"])
    return [i for row in rows if row[0] == client for _, ids in row[3] for i in ids]


def test_a_failover_logs_the_switch_and_nothing_else(start_server, caplog) -> None:
    """Regression: every failover printed four "not a registered worker" warnings (the
    client resent to the new primary before registering there)."""
    primary = start_server(mode="sync", replication="async")
    standby = start_server(mode="sync", standby_of=primary.address)
    with caplog.at_level(logging.INFO, logger="zps.client"), \
            zps.Client([primary.address], standbys=[standby.address]) as ps:
        ps.init({"w": np.zeros(8, np.float32), "v": np.zeros(3, np.float32)})
        ps.push_pull({"w": np.ones(8), "v": np.ones(3)})
        wait_for(lambda: caught_up(primary, standby), what="the standby to catch up")
        primary.stop()
        after = ps.push_pull({"w": np.ones(8), "v": np.ones(3)})
        np.testing.assert_array_equal(after["w"], 2.0)
    said = [r.getMessage() for r in caplog.records if r.name == "zps.client"]
    assert len(said) == 1 and "took over" in said[0], said


def test_pushes_waiting_in_a_round_are_not_in_snapshots(start_server) -> None:
    server = start_server(mode="sync", workers=2)
    a, b = (zps.Client([server.address], client_id=f"w{i}") for i in range(2))
    try:
        for c in (a, b):
            c.init({"w": np.zeros(4, np.float32)})
        a.push({"w": np.ones(4)})  # acknowledged once its round is open; not applied yet
        assert not applied_ids(server, "w0")  # a standby must not skip it
        b.push({"w": np.ones(4)})
        wait_for(lambda: applied_ids(server, "w0"),
                 what="the applied round to enter the request identity")
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------------- real processes


def _push_until(address: str, standby: str, worker: int, steps: int,
                acked: list[int], errors: list[BaseException]) -> None:
    """A worker pushing ``worker + 1`` per step, counting the acknowledged pushes."""
    try:
        with zps.Client([address], standbys=[standby], timeout=5.0) as ps:
            ps.init({"w": np.zeros(256, np.float32)})
            for _ in range(steps):
                ps.push({"w": np.full(256, worker + 1, np.float32)})
                acked[worker] += 1
    except BaseException as exc:  # reported by the test thread
        errors.append(exc)


def test_sigkill_the_primary_many_times_loses_nothing_acknowledged(tmp_path: Path) -> None:
    rng = random.Random(5)
    for attempt in range(3):
        with LocalCluster(tmp_path / str(attempt)) as cluster:
            cluster.start_servers(1, ["--mode", "async", "--replication", "sync"])
            cluster.start_standbys(["--mode", "async"])
            primary, standby = cluster.addresses[0], cluster.standby_addresses[0]
            with zps.Client([primary], role="observer", heartbeat_interval=0) as probe:
                wait_for(lambda: probe.stats()[0]["replica"]["standby"],
                         what="the standby to attach")
                steps, acked, errors = 300, [0, 0], []
                threads = [threading.Thread(target=_push_until, args=(
                    primary, standby, w, steps, acked, errors)) for w in range(2)]
                for t in threads:
                    t.start()
                kill_at = rng.randrange(20, 250)
                wait_for(lambda: sum(acked) >= kill_at or errors,  # noqa: B023
                         what="pushes before the kill")
            cluster.kill_server(0)
            for t in threads:
                t.join(timeout=60)
            assert not errors, errors
            assert acked == [steps, steps]
            with zps.Client([standby], role="observer") as ps:
                ps.init({"w": np.zeros(256, np.float32)})
                final = ps.pull()["w"]
                assert ps.stats()[0]["epoch"] == 2
            # A replay of exactly the acknowledged pushes: none lost, none twice.
            np.testing.assert_array_equal(final, steps * 1 + steps * 2)
            log = (tmp_path / str(attempt) / "standby0.log").read_text()
            assert "promoted to primary (epoch 2)" in log


def test_old_primary_comes_back_as_the_new_standby(tmp_path: Path) -> None:
    with LocalCluster(tmp_path) as cluster:
        cluster.start_servers(1, ["--mode", "async"])
        cluster.start_standbys(["--mode", "async"])
        primary, standby = cluster.addresses[0], cluster.standby_addresses[0]
        with zps.Client([primary], standbys=[standby]) as ps:
            ps.init({"w": np.zeros(8, np.float32)})
            wait_for(lambda: ps.stats()[0]["replica"]["standby"], what="the standby")
            ps.push({"w": np.ones(8)})
            cluster.kill_server(0)
            ps.push({"w": np.ones(8)})  # fails over
            # The old primary restarts as the standby of the new one, on its old port.
            cluster._wait_ready([cluster._server("old-primary", [
                "--mode", "async", "--standby-of", standby])], 30)
            old = (tmp_path / "old-primary.addr").read_text()
            wait_for(lambda: ps.stats()[0]["replica"]["standby"], what="the new standby")
            ps.push({"w": np.ones(8)})
            np.testing.assert_array_equal(ps.pull()["w"], 3)
        with zps.Client([old], role="observer") as probe:
            info = probe.stats()[0]
            wait_for(lambda: probe.stats()[0]["seq"] == info["replica"]["primary_seq"] > 0,
                     what="the old primary to catch up")
        sock = raw_dealer(old)
        try:  # no split brain: it takes no write of its own
            reply = raw_request(sock, Op.PUSH, 1, arrays={"w": np.ones(8, np.float32)})
            assert reply.error is not None and reply.error[0] == "not_primary"
        finally:
            sock.close()


def test_killed_standby_leaves_the_primary_serving_and_a_new_one_catches_up(
        tmp_path: Path) -> None:
    with LocalCluster(tmp_path) as cluster:
        cluster.start_servers(1, ["--mode", "async", "--replication", "sync"])
        cluster.start_standbys(["--mode", "async"])
        primary = cluster.addresses[0]
        with zps.Client([primary]) as ps:
            ps.init({"w": np.zeros(8, np.float32)})
            wait_for(lambda: ps.stats()[0]["replica"]["standby"], what="the standby")
            ps.push({"w": np.ones(8)})
            cluster.kill_server(1)  # the standby
            ps.push({"w": np.ones(8)})  # acknowledged without it once it is declared dead
            wait_for(lambda: ps.stats()[0]["replica"]["standby"] is None,
                     what="the primary to notice")
            cluster.start_standbys(["--mode", "async"])
            wait_for(lambda: ps.stats()[0]["replica"]["standby"], what="a new standby")
            ps.push({"w": np.ones(8)})
            lag = ps.stats()[0]["replica"]["lag"]
            np.testing.assert_array_equal(ps.pull()["w"], 3)
        assert lag == 0


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_and_restore_round_trip_exactly(start_server, tmp_path: Path) -> None:
    server = start_server(mode="async", checkpoint_dir=str(tmp_path))
    train_a_little(server.address, 12)
    before = state(server)
    server.stop()  # a clean shutdown writes a checkpoint
    assert latest_checkpoint(tmp_path) is not None
    restored = start_server(mode="async", restore=str(tmp_path))
    assert state(restored) == before
    with zps.Client([restored.address]) as ps:  # and it keeps serving from there
        ps.init({"w": np.zeros((40, 30), np.float32)})
        assert ps.stats()[0]["tables"][0]["version"] == 12


def test_the_final_checkpoint_survives_a_periodic_writer(start_server, tmp_path: Path) -> None:
    """Regression: the periodic writer's thread and the shutdown writer raced and deleted
    each other's temporary file, so the final checkpoint could be lost."""
    for attempt in range(3):
        folder = tmp_path / str(attempt)
        server = start_server(mode="async", checkpoint_dir=str(folder), checkpoint_every=0.001)
        train_a_little(server.address, 30)
        final = seq(server)
        server.stop()
        path = latest_checkpoint(folder)
        assert path is not None and read_checkpoint(path).seq == final
        assert not list(folder.glob(".ckpt-*"))  # no temporary file left behind


def test_corrupt_checkpoint_is_refused_with_one_line(tmp_path: Path) -> None:
    server = ServerThread(zps.ServerConfig(bind="tcp://127.0.0.1:0", mode="async",
                                           checkpoint_dir=str(tmp_path)))
    try:
        train_a_little(server.address, 3)
    finally:
        server.stop()
    path = latest_checkpoint(tmp_path)
    assert path is not None
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    result = run_cli("zps.cli.server_main", "--bind", "tcp://127.0.0.1:0", "--restore",
                     str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "checksum" in result.stderr, result.stderr
    empty = run_cli("zps.cli.server_main", "--bind", "tcp://127.0.0.1:0", "--restore",
                    str(tmp_path / "none"))
    assert empty.returncode == 2 and "no checkpoint" in empty.stderr


def test_periodic_checkpoints_from_the_daemon(tmp_path: Path) -> None:
    ready = tmp_path / "addr"
    proc = subprocess.Popen(
        [sys.executable, "-m", "zps.cli.server_main", "--bind", "tcp://127.0.0.1:0",
         "--mode", "async", "--checkpoint-dir", str(tmp_path / "ckpt"),
         "--checkpoint-every", "0.2", "--ready-file", str(ready)],
        env=python_env(), cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(ready.exists, what="the server to listen")
        train_a_little(ready.read_text(), 4)
        wait_for(lambda: latest_checkpoint(tmp_path / "ckpt"), what="a periodic checkpoint")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "checkpoint" in err


@pytest.mark.parametrize("args,message", [
    (["--standby-of", "nowhere"], "must look like tcp://HOST:PORT"),
    (["--standby-of", "tcp://127.0.0.1:1", "--restore", "x"], "exclude each other"),
    (["--replication", "maybe"], "replication"),
])
def test_replication_flag_mistakes(args: list[str], message: str) -> None:
    result = run_cli("zps.cli.server_main", *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_async_client_fails_over_too(start_server) -> None:
    import asyncio

    primary = start_server(mode="async")
    standby = start_server(mode="async", standby_of=primary.address)
    wait_attached(primary)  # (a loaded CI machine once stopped the primary before)

    async def main() -> tuple[np.ndarray, int]:
        async with zps.AsyncClient([primary.address], standbys=[standby.address]) as ps:
            await ps.init({"w": np.zeros(64, np.float32)})
            await asyncio.gather(*(ps.push({"w": np.ones(64)}) for _ in range(10)))
            await asyncio.to_thread(primary.stop)
            await asyncio.gather(*(ps.push({"w": np.ones(64)}) for _ in range(10)))
            return (await ps.pull())["w"], (await ps.stats())[0]["epoch"]

    final, epoch = asyncio.run(main())
    np.testing.assert_array_equal(final, 20)
    assert epoch == 2


def test_sync_rounds_carry_on_across_a_failover(start_server) -> None:
    primary = start_server(mode="sync", workers=2)
    standby = start_server(mode="sync", workers=2, standby_of=primary.address)
    wait_attached(primary)
    steps, results = 40, [np.empty(0), np.empty(0)]
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            with zps.Client([primary.address], standbys=[standby.address]) as ps:
                ps.init({"w": np.zeros(16, np.float32)})
                for step in range(steps):
                    results[i] = ps.push_pull({"w": np.full(16, i + 1, np.float32)})["w"]
                    if i == 0 and step == steps // 2:
                        primary.stop()  # mid-training: the standby takes over
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    # Every round is the mean of both workers' pushes, each applied exactly once.
    for r in results:
        np.testing.assert_array_equal(r, 1.5 * steps)


def test_the_standby_stream_queue_is_bounded(monkeypatch) -> None:
    """Regression: the standby's follower queue was unbounded (defeating the high-water
    mark); past its bound a message is dropped and marks a resync."""
    monkeypatch.setattr(follower, "STREAM_QUEUE", 10)
    core = zps.server.ServerCore(zps.ServerConfig(standby_of="tcp://127.0.0.1:1"), "s")
    link = follower.Follower(core, zmq.Context.instance(), "tcp://127.0.0.1:1", "standby-s")
    for _ in range(50):
        link._on_stream([b"c", b"x" * 100])
    assert len(link._stream) == 10 and link._overflowed
