"""Client and server over real ZeroMQ sockets on random 127.0.0.1 ports."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq

import zps
import zps.protocol
from zps.protocol import (
    PROTOCOL_VERSION,
    UPDATE_OPS,
    Op,
    Request,
    TensorMeta,
    decode_reply,
    encode_request,
)
from zps.runtime import run

from .conftest import ServerThread


def raw_dealer(address: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    sock.connect(address)
    return sock


def raw_request(sock: zmq.Socket, op: Op, rid: int, client: str = "raw", **kw: Any) -> Any:
    """Send one request by hand; updates carry the watermark ``rid`` unless given."""
    arrays = kw.pop("arrays", {})
    metas = tuple(TensorMeta.of(n, a) for n, a in arrays.items())
    if op in UPDATE_OPS:
        kw.setdefault("watermark", rid)
    sock.send_multipart(encode_request(Request(op, client, rid, metas, buffers=tuple(
        arrays.values()), **kw)))
    return decode_reply(sock.recv_multipart())


def table(server: ServerThread, name: str) -> np.ndarray:
    return server.run(lambda: server.server.core.store.get(name).data.copy())


def test_init_push_pull_push_pull(start_server) -> None:
    server = start_server(mode="sync")
    with zps.Client([server.address]) as ps:
        got = ps.init({"w": np.zeros((3, 4), np.float32), "b": np.arange(5.0)})
        np.testing.assert_array_equal(got["b"], np.arange(5.0))
        ps.push({"w": np.ones((3, 4), np.float32)})
        np.testing.assert_array_equal(ps.pull(["w"])["w"], 1)
        after = ps.push_pull({"w": np.full((3, 4), 2.0), "b": np.ones(5)})
        np.testing.assert_array_equal(after["w"], 3)
        np.testing.assert_array_equal(after["b"], np.arange(5.0) + 1)
        assert ps.mode == "sync"
        assert set(ps.pull()) == {"w", "b"}


def test_sync_average_of_three_workers_is_exact(start_server) -> None:
    server = start_server(mode="sync", workers=3)
    theta0 = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    deltas = [np.full((3, 4), v, np.float32) for v in (1.0, 2.0, 6.0)]
    clients = [zps.Client([server.address]) for _ in range(3)]
    try:
        for ps in clients:
            ps.init({"w": theta0})
        for ps, delta in zip(clients, deltas, strict=True):
            ps.push({"w": delta})
        expected = theta0 + np.float32(1 / 3) * (deltas[0] + deltas[1] + deltas[2])
        for ps in clients:
            np.testing.assert_array_equal(ps.pull()["w"], expected)
        np.testing.assert_array_equal(expected, theta0 + 3)  # the mean, exactly
    finally:
        for ps in clients:
            ps.close()


def test_sync_pull_waits_for_the_round_and_workers_flag(start_server) -> None:
    server = start_server(mode="sync", workers=2)
    first = zps.Client([server.address])
    first.init({"w": np.zeros(4, np.float32)})
    result: dict[str, np.ndarray] = {}
    worker = threading.Thread(target=lambda: result.update(first.push_pull({"w": np.ones(4)})))
    worker.start()
    worker.join(timeout=0.3)
    assert worker.is_alive()  # alone, the first worker cannot close the first round
    with zps.Client([server.address]) as second:
        second.init({"w": np.zeros(4, np.float32)})
        np.testing.assert_array_equal(second.push_pull({"w": np.full(4, 3.0)})["w"], 2)
    worker.join(timeout=10)
    np.testing.assert_array_equal(result["w"], 2)
    first.close()


def test_async_mode_applies_each_push_with_lr_scale(start_server) -> None:
    server = start_server(mode="async", lr_scale=0.5)
    with zps.Client([server.address]) as a, zps.Client([server.address]) as b:
        a.init({"w": np.zeros(2)})
        b.init({"w": np.zeros(2)})
        a.push({"w": np.ones(2)})
        np.testing.assert_array_equal(b.push_pull({"w": np.full(2, 4.0)})["w"], 2.5)


def test_init_first_wins_and_conflicts_change_nothing(start_server) -> None:
    server = start_server()
    with zps.Client([server.address]) as a, zps.Client([server.address]) as b:
        a.init({"w": np.ones(3, np.float32)})
        np.testing.assert_array_equal(b.init({"w": np.zeros(3, np.float32)})["w"], 1)
        with pytest.raises(zps.ShapeMismatchError, match="does not match"):
            b.init({"w": np.zeros(4, np.float32), "new": np.zeros(1)})
        assert "new" not in server.run(lambda: list(t.name for t in server.server.core.store))
        with pytest.raises(zps.ShapeMismatchError):
            a.push({"w": np.zeros(5)})
        with pytest.raises(zps.ZpsError, match="unknown table 'x'"):
            a.pull(["x"])
    np.testing.assert_array_equal(table(server, "w"), 1)


def test_split_table_across_two_servers(start_server) -> None:
    servers = [start_server(mode="sync"), start_server(mode="sync")]
    addresses = [s.address for s in servers]
    w0 = np.arange(256 * 64, dtype=np.float32).reshape(256, 64)  # 64 KiB
    with zps.Client(addresses, chunk_bytes=16 * 1024) as ps:
        ps.init({"w": w0, "b": np.zeros(3)})
        delta = np.random.default_rng(0).standard_normal(w0.shape).astype(np.float32)
        np.testing.assert_array_equal(ps.push_pull({"w": delta})["w"], w0 + delta)
        stats = ps.stats()
    held = [[t["name"] for t in s["tables"]] for s in stats]
    assert all(len(h) >= 2 for h in held)  # both servers own parts of w
    assert sum(t["shape"][0] for s in stats for t in s["tables"] if t["name"] != "b") == 256


def test_large_tensor_travels_in_chunks(start_server) -> None:
    server = start_server(mode="sync")
    w0 = np.random.default_rng(1).standard_normal((1024, 4096)).astype(np.float32)  # 16 MiB
    with zps.Client([server.address], chunk_bytes=4 << 20) as ps:
        ps.init({"w": w0})
        got = ps.push_pull({"w": np.ones_like(w0)})
        np.testing.assert_array_equal(got["w"], w0 + 1)
        assert len(ps.stats()[0]["tables"]) == 4


def test_retried_push_is_applied_once(start_server) -> None:
    server = start_server(mode="async")
    with zps.Client([server.address]) as ps:
        ps.init({"w": np.zeros(2)})
    sock = raw_dealer(server.address)
    try:
        delta = {"w": np.ones(2)}
        first = raw_request(sock, Op.PUSH, 11, arrays=delta)
        retry = raw_request(sock, Op.PUSH, 11, arrays=delta)
        assert first.ok and retry.ok
        np.testing.assert_array_equal(table(server, "w"), 1)
        assert raw_request(sock, Op.PUSH, 12, arrays=delta).ok
        np.testing.assert_array_equal(table(server, "w"), 2)
    finally:
        sock.close()


def test_garbage_gets_errors_while_a_real_client_keeps_working(start_server) -> None:
    server = start_server(mode="sync")
    with zps.Client([server.address]) as ps:
        ps.init({"w": np.zeros(4, np.float32)})
        sock = raw_dealer(server.address)
        try:
            garbage = [
                [b"\xff\x00garbage"],
                [msgpack.packb({"v": PROTOCOL_VERSION, "op": "push", "c": "x", "r": 5,
                                "t": [["w", "float32", [4], 16]]}), b"short"],
                [msgpack.packb({"v": PROTOCOL_VERSION, "op": "push", "c": "x", "r": 6,
                                "t": [["w", "float32", [2], 8]]}), b"\0" * 8],
                [msgpack.packb({"v": PROTOCOL_VERSION, "op": "push", "c": "x", "r": 7,
                                "t": [["w", "int64", [4], 32]]}), b"\0" * 32],
                [msgpack.packb({"v": PROTOCOL_VERSION, "op": "push", "c": "x", "r": 10, "w": 10,
                                "t": [["w", "float32", [4], 16]]}), b"\0" * 16],
                [msgpack.packb({"v": PROTOCOL_VERSION, "op": "pull", "c": "x", "r": 8,
                                "n": ["nope"]})],
                [msgpack.packb({"v": 9, "op": "pull", "c": "x", "r": 9, "n": ["w"]})],
            ]
            codes = []
            for frames in garbage:
                sock.send_multipart(frames)
                reply = decode_reply(sock.recv_multipart())
                assert reply.error is not None and reply.error[1]
                codes.append(reply.error[0])
                np.testing.assert_array_equal(ps.push_pull({"w": np.ones(4)})["w"],
                                              len(codes))
            assert codes == ["bad_header", "bad_frames", "shape_mismatch", "bad_dtype",
                             "not_registered", "unknown_table", "bad_version"]
        finally:
            sock.close()
    np.testing.assert_array_equal(table(server, "w"), len(garbage))


def test_shape_mismatch_from_the_wire_changes_nothing(start_server) -> None:
    server = start_server(mode="async")
    with zps.Client([server.address]) as ps:
        ps.init({"w": np.zeros(4, np.float32), "v": np.zeros(2, np.float32)})
    sock = raw_dealer(server.address)
    try:
        reply = raw_request(sock, Op.PUSH, 1, arrays={"v": np.ones(2, np.float32),
                                                      "w": np.ones(3, np.float32)})
        assert reply.error is not None and reply.error[0] == "shape_mismatch"
        np.testing.assert_array_equal(table(server, "v"), 0)  # nothing partly applied
    finally:
        sock.close()


def test_oversized_message_is_refused_by_client_and_server(start_server) -> None:
    server = start_server(limits=zps.protocol.Limits(max_message_bytes=128 * 1024))
    with zps.Client([server.address]) as ps:
        ps.init({"w": np.zeros(8, np.float32)})
        with pytest.raises(zps.RejectedError, match="exceeds the server's limit"):
            ps.init({"big": np.zeros(64 * 1024, np.float32)})  # 256 KiB in one part
        ps.push({"w": np.ones(8)})
        np.testing.assert_array_equal(ps.pull()["w"], 1)
    # A peer that ignores the limit: every frame fits, the message as a whole does not.
    sock = raw_dealer(server.address)
    try:
        parts = {f"t{i}": np.zeros(16 * 1024, np.float32) for i in range(3)}  # 3 x 64 KiB
        reply = raw_request(sock, Op.INIT, 1, arrays=parts)
        assert reply.error is not None and reply.error[0] == "too_large"
    finally:
        sock.close()
    assert server.run(lambda: len(server.server.core.store)) == 1


def test_unreachable_server_is_a_clear_error() -> None:
    # A free port with nobody listening, below the ephemeral range: a port inside it may
    # be the one the client's own connection picks, which then connects to itself.
    port = zmq.Context.instance().socket(zmq.ROUTER)
    addr_port = port.bind_to_random_port("tcp://127.0.0.1", min_port=20000, max_port=32000)
    port.close(linger=0)
    with pytest.raises(zps.ServerUnreachable, match="could not reach a zps server"):
        zps.Client([f"tcp://127.0.0.1:{addr_port}"], connect_timeout=0.5)


def test_server_restart_gives_the_client_a_clear_error(start_server) -> None:
    server = start_server(mode="async")
    address = server.address
    ps = zps.Client([address], timeout=2.0, retries=0)
    try:
        ps.init({"w": np.zeros(2)})
        server.stop()
        with pytest.raises(zps.ServerUnreachable, match="no answer"):
            ps.push({"w": np.ones(2)})
        start_server(mode="async", bind=address)
        with pytest.raises(zps.ConnectionLost, match="restarted"):
            ps.pull()
        with zps.Client([address]) as other:  # the restarted server holds a new "w"
            other.init({"w": np.full(2, 5.0)})
            mine = np.full(2, 7.0)
            with pytest.raises(zps.ConnectionLost, match="restarted"):
                ps.pull(out={"w": mine})
            assert mine.tolist() == [7.0, 7.0]  # (review: it was written before the error)
    finally:
        ps.close()


def test_stats_reports_members_and_counters(start_server) -> None:
    server = start_server(mode="sync")
    with zps.Client([server.address]) as ps:
        ps.init({"w": np.zeros(2)})
        ps.push_pull({"w": np.ones(2)})
        stats = ps.stats()[0]
    assert stats["mode"] == "sync" and stats["seq"] == 2  # the create and one round
    assert stats["counters"]["pushes"] == 1 and stats["counters"]["rounds"] == 1
    assert [m["role"] for m in stats["members"]] == ["worker"]
    assert stats["tables"][0]["version"] == 1


def test_worker_restarted_with_the_same_id_is_not_deduplicated(start_server) -> None:
    server = start_server(mode="async")
    for _ in range(2):  # the same worker id, two lives
        with zps.Client([server.address], client_id="worker-7") as ps:
            ps.init({"w": np.zeros(1)})
            for _ in range(3):
                ps.push({"w": np.ones(1)})
    np.testing.assert_array_equal(table(server, "w"), 6)


def test_a_later_init_never_moves_placed_tables(start_server) -> None:
    servers = [start_server(), start_server()]
    with zps.Client([s.address for s in servers]) as ps:
        ps.init({"a": np.ones(10)})
        ps.init({"b": np.ones(1000)})  # bigger: a fresh plan would put it first
        np.testing.assert_array_equal(ps.pull(["a"])["a"], 1)
        with pytest.raises(zps.ShapeMismatchError, match="does not match"):
            ps.init({"a": np.ones(11)})


def test_a_client_cannot_change_its_role(start_server) -> None:
    server = start_server(mode="sync")
    sock = raw_dealer(server.address)
    try:
        assert raw_request(sock, Op.HELLO, 1, client="x", options={"role": "observer"}).ok
        reply = raw_request(sock, Op.HELLO, 2, client="x", options={"role": "worker"})
        assert reply.error is not None and "cannot change" in reply.error[1]
        assert server.run(lambda: server.server.core.rounds.bsp.members) == set()
    finally:
        sock.close()


def test_shutdown_answers_waiting_pulls(start_server) -> None:
    server = start_server(mode="sync", workers=2)
    ps = zps.Client([server.address], timeout=60, retries=0)
    errors: list[BaseException] = []

    def wait_for_round() -> None:
        try:
            ps.push_pull({"w": np.ones(2)})
        except zps.ZpsError as exc:
            errors.append(exc)

    try:
        ps.init({"w": np.zeros(2)})
        waiter = threading.Thread(target=wait_for_round)
        waiter.start()
        from .conftest import wait_for

        wait_for(lambda: server.run(lambda: server.server.core.counters["pushes"]) == 1,
                 what="the push to arrive")
        server.stop()
        waiter.join(timeout=20)
        assert not waiter.is_alive()
        assert isinstance(errors[0], zps.RejectedError) and "shutting down" in str(errors[0])
    finally:
        ps.close()


@contextlib.contextmanager
def fake_server(serve: Callable[[zmq.Socket], None]) -> Iterator[str]:
    """A ROUTER on a random loopback port, answered by ``serve(router)`` on a thread until
    it returns; yields its address (and waits for ``serve`` to finish)."""
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    thread = threading.Thread(target=serve, args=(router,), daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{port}"
        thread.join(timeout=10)
    finally:
        router.close(linger=0)


def test_reply_arrays_that_disagree_with_their_header_are_not_used() -> None:
    """A reply whose array frame does not match its header is dropped; the resend works."""
    value = np.arange(4, dtype=np.float32)
    meta = [["w", "float32", [4], 16]]

    def serve(router: zmq.Socket) -> None:
        bad_sent = False
        while True:
            peer, raw = router.recv_multipart()[:2]
            head = msgpack.unpackb(raw)
            reply = {"v": PROTOCOL_VERSION, "r": head["r"], "i": {"sid": "fake"}}
            if head["op"] == "hello":
                router.send_multipart([peer, msgpack.packb(reply)])
            elif head["op"] in ("init", "pull"):
                reply["t"] = meta
                if head["op"] == "pull" and not bad_sent:
                    bad_sent = True
                    router.send_multipart([peer, msgpack.packb(reply), b"\0" * 8])  # short
                else:
                    router.send_multipart([peer, msgpack.packb(reply), value.tobytes()])
            elif head["op"] == "bye":
                router.send_multipart([peer, msgpack.packb(reply)])
                return

    with fake_server(serve) as address, zps.Client(
            [address], timeout=0.3, retries=3, heartbeat_interval=0) as ps:
        ps.init({"w": np.zeros(4, np.float32)})
        np.testing.assert_array_equal(ps.pull()["w"], value)


def test_pulling_an_unknown_table_is_an_unknown_table_error(start_server) -> None:
    """Regression: ps.pull(["nope"]) raised a plain ZpsError."""
    server = start_server(mode="async")
    with zps.Client([server.address]) as ps:
        with pytest.raises(zps.UnknownTableError, match="init"):
            ps.pull(["nope"])
        ps.init({"w": np.zeros(2)})
        with pytest.raises(zps.UnknownTableError, match="'nope'"):
            ps.pull(["nope"])
        with pytest.raises(KeyError):
            ps.push({"nope": np.ones(2)})
        assert set(ps.pull("w")) == {"w"}  # one name as a string


def test_an_async_client_used_after_close_says_so(start_server) -> None:
    """Regression: AsyncClient used after close() raised IndexError."""
    server = start_server(mode="async")

    async def main() -> None:
        async with zps.AsyncClient([server.address]) as ps:
            await ps.init({"w": np.zeros(2)})
        with pytest.raises(zps.ClosedError):
            await ps.pull()
        with pytest.raises(zps.ClosedError):
            await ps.push({"w": np.ones(2)})

    run(main())


def test_workers_listing_the_servers_in_another_order_are_told_at_once(start_server) -> None:
    """Regression: workers given the same servers in a different order hung (their tables
    landed on different servers and no sync round ever closed)."""
    a, b = start_server(mode="sync"), start_server(mode="sync")
    with zps.Client([a.address, b.address]) as ps:
        ps.init({"w": np.zeros((300, 4), np.float32), "v": np.zeros(7, np.float32)})
        with pytest.raises(zps.ShapeMismatchError, match="same order"):
            zps.Client([b.address, a.address], connect_timeout=2)
        with pytest.raises(zps.ShapeMismatchError, match="chunk_bytes"):
            zps.Client([a.address, b.address], chunk_bytes=1024, connect_timeout=2)
        with zps.Client([a.address, b.address], role="observer") as watcher:
            assert watcher.stats()[0]["layout"] == [2, ps.config.chunk_bytes]


def test_init_keeps_0d_arrays_and_stores_other_numbers_as_float32(start_server) -> None:
    """Regression: 0-d arrays came back with shape (1,). Integer and float16 values are
    stored as float32 (documented); other kinds are refused."""
    server = start_server(mode="async")
    with zps.Client([server.address]) as ps:
        got = ps.init({"s": np.float64(2.5), "i": np.arange(3), "h": np.ones(2, np.float16)})
        assert got["s"].shape == () and got["s"].dtype == np.float64 and got["s"] == 2.5
        assert got["i"].dtype == np.float32 and got["h"].dtype == np.float32
        ps.push({"s": 0.5})
        assert ps.pull(["s"])["s"] == 3.0
        with pytest.raises(zps.ShapeMismatchError, match="real numbers"):
            ps.init({"b": np.array([True, False])})


def test_a_rerun_against_a_live_server_says_so_once(start_server, caplog) -> None:
    """Regression: a re-run against a live server silently continued from the old
    parameters."""
    server = start_server(mode="async")
    with zps.Client([server.address]) as ps:
        ps.init({"w": np.zeros(2)})
        ps.push({"w": np.ones(2)})
    with caplog.at_level(logging.WARNING, logger="zps.client"), \
            zps.Client([server.address]) as ps:
        ps.init({"w": np.zeros(2)})
        ps.init({"w": np.zeros(2)})
    said = [r.getMessage() for r in caplog.records if "already on the servers" in r.getMessage()]
    assert len(said) == 1 and "w (version 1)" in said[0]


@pytest.mark.parametrize("codec", ["int8:12", "sign:4", "int8:0", "topk:2", "int8:99999999"])
def test_codecs_the_server_would_refuse_are_refused_by_the_client_too(codec: str) -> None:
    """Regression: the client accepted codec specs the server refused."""
    with pytest.raises(zps.ConfigError, match="codec"):
        zps.Client(["tcp://127.0.0.1:1"], codec=codec)
    with pytest.raises(zps.ConfigError, match="codec"):
        zps.Client(["tcp://127.0.0.1:1"], pull_codec=codec)
