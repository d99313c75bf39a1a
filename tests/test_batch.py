"""Small requests coalesced into one message: the envelope (sans-IO), a real server answering
each request of a batch on its own, and the clients sending batches."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

import zps
from zps.protocol import (
    DEFAULT_LIMITS,
    PROTOCOL_VERSION,
    Limits,
    Op,
    Request,
    TensorMeta,
    encode_request,
)
from zps.protocol.batch import (
    BATCH_BYTES,
    BATCH_PREFIX,
    BATCH_REQUEST_BYTES,
    MAX_BATCH,
    coalesce,
    encode_batch,
    is_batch,
    split_batch,
)
from zps.protocol.fields import DecodeError
from zps.protocol.framing import decode_reply

from .test_client_server import fake_server, raw_dealer, table

frame = st.binary(min_size=1, max_size=64)
message = st.lists(frame, min_size=1, max_size=4)


@given(st.lists(message, min_size=1, max_size=MAX_BATCH))
def test_a_batch_splits_into_the_messages_it_was_made_of(messages: list[list[bytes]]) -> None:
    frames = encode_batch(messages)
    assert is_batch(frames[0])
    assert [list(part) for part in split_batch(frames, DEFAULT_LIMITS)] == messages


@given(st.sampled_from([Op.PUSH, Op.PULL, Op.PUSH_PULL, Op.HELLO, Op.HEARTBEAT]),
       st.integers(0, 2**63 - 1))
def test_no_request_header_reads_as_a_batch(op: Op, rid: int) -> None:
    value = np.ones(3, np.float32)
    tensors = (TensorMeta.of("batch", value),) if op in (Op.PUSH, Op.PUSH_PULL) else ()
    names = ("batch",) if op == Op.PULL else ()
    frames = encode_request(Request(op, "batch", rid, tensors, names,
                                    buffers=(value,) if tensors else (),
                                    watermark=rid if tensors else None))
    assert not is_batch(frames[0])
    assert not is_batch(BATCH_PREFIX)  # (the prefix alone is no envelope)


def _envelope(**fields: Any) -> bytes:
    return msgpack.packb({"v": PROTOCOL_VERSION, "op": "batch", **fields})


@pytest.mark.parametrize(("envelope", "frames", "code"), [
    (_envelope(k=[1, 1]), 3, "bad_frames"),  # announces 2, carries 3
    (_envelope(k=[2]), 1, "bad_frames"),
    (_envelope(k=[0, 2]), 2, "bad_header"),  # a request has at least its header
    (_envelope(k=[]), 0, "bad_header"),
    (_envelope(k=[1] * (MAX_BATCH + 1)), MAX_BATCH + 1, "bad_header"),
    (_envelope(k=[True]), 1, "bad_header"),
    (_envelope(k="11"), 2, "bad_header"),
    (_envelope(k=[1], extra=1), 1, "bad_header"),
    (msgpack.packb({"v": PROTOCOL_VERSION + 1, "op": "batch", "k": [1]}), 1, "bad_version"),
    (BATCH_PREFIX + b"\xc1", 1, "bad_header"),  # not msgpack
])
def test_a_malformed_envelope_is_refused_whole(envelope: bytes, frames: int,
                                                code: str) -> None:
    with pytest.raises(DecodeError) as info:
        split_batch([envelope, *[b"x"] * frames], DEFAULT_LIMITS)
    assert info.value.code == code


def test_a_batch_over_the_size_limit_is_refused() -> None:
    frames = encode_batch([[b"a" * 600], [b"b" * 600]])
    with pytest.raises(DecodeError) as info:
        split_batch(frames, Limits(max_message_bytes=1000))
    assert info.value.code == "too_large"


sends = st.lists(st.tuples(st.integers(0, 3), st.sampled_from([8, 1000, BATCH_REQUEST_BYTES + 1])),
                 max_size=40)


@settings(max_examples=200)
@given(sends, st.integers(0, 5), st.sampled_from([BATCH_BYTES, 4096, 1600]))
def test_coalescing_keeps_each_endpoints_order_and_joins_only_small_requests(
        plan: list[tuple[int, int]], limit: int, most: int) -> None:
    queued = [(endpoint, [f"{i}".encode(), b"." * size]) for i, (endpoint, size)
              in enumerate(plan)]
    out = coalesce(list(queued), lambda endpoint: (limit if endpoint != 3 else 0, most))
    seen: dict[int, list[list[Any]]] = {}
    for endpoint, frames in out:
        if is_batch(frames[0]):
            parts = [list(p) for p in split_batch(frames, Limits(max_message_bytes=most))]
            assert endpoint != 3 and 2 <= len(parts) <= limit
            assert all(len(p[1]) <= BATCH_REQUEST_BYTES for p in parts)
        else:
            parts = [frames]
        seen.setdefault(endpoint, []).extend(parts)
    for endpoint in range(4):
        assert seen.get(endpoint, []) == [f for e, f in queued if e == endpoint]


def _push(rid: int, name: str, value: np.ndarray) -> list[Any]:
    return encode_request(Request(Op.PUSH, "raw", rid, (TensorMeta.of(name, value),),
                                  buffers=(value,), watermark=rid))


def _served(start_server: Any) -> tuple[Any, zmq.Socket]:
    """An async server holding table ``w`` (4 zeros), and a raw socket to it."""
    server = start_server(mode="async")
    with zps.Client([server.address]) as ps:
        ps.init({"w": np.zeros(4, np.float32)})
    return server, raw_dealer(server.address)


def _replies(sock: zmq.Socket) -> list[Any]:
    """The replies in the next message (a batch of them, or one)."""
    frames = sock.recv_multipart()
    parts = split_batch(frames, DEFAULT_LIMITS) if is_batch(frames[0]) else [frames]
    return [decode_reply(part) for part in parts]


def test_a_server_answers_each_request_of_a_batch_on_its_own(start_server) -> None:
    server, sock = _served(start_server)
    one = np.ones(4, np.float32)
    sock.send_multipart(encode_batch([
        encode_request(Request(Op.HELLO, "raw", 1, options={"role": "worker"})),
        _push(2, "w", one),
        _push(3, "nope", one),  # an unknown table: its own error, the others go on
        encode_request(Request(Op.PULL, "raw", 4, names=("w",))),
        _push(2, "w", one),  # a retry of request 2 in the same batch: applied once
    ]))
    replies = _replies(sock)  # the answers to a batch: a batch
    assert [r.request_id for r in replies] == [1, 2, 3, 4, 2]
    got = {r.request_id: r for r in replies}
    assert got[1].error is None and got[2].error is None
    assert got[3].error is not None and got[3].error[0] == "unknown_table"
    assert np.array_equal(got[4].arrays()["w"], one)
    assert np.array_equal(table(server, "w"), one)
    assert server.run(lambda: server.server.core.state.counters["batches"]) == 1
    sock.close()


def test_a_malformed_batch_changes_nothing(start_server) -> None:
    server, sock = _served(start_server)
    frames = encode_batch([_push(2, "w", np.ones(4, np.float32)), [b"extra"]])
    sock.send_multipart(frames[:-1])  # the envelope announces one frame more
    reply = decode_reply(sock.recv_multipart())
    assert reply.error is not None and reply.error[0] == "bad_frames"
    assert reply.request_id is None
    assert np.array_equal(table(server, "w"), np.zeros(4, np.float32))
    sock.close()


def test_an_async_clients_calls_of_one_turn_leave_as_one_batch(start_server) -> None:
    server = start_server(mode="async")
    names = [f"t{i}" for i in range(8)]

    async def main() -> list[np.ndarray]:
        async with zps.AsyncClient([server.address], heartbeat_interval=0) as ps:
            await ps.init({n: np.zeros(16, np.float32) for n in names})
            await asyncio.gather(*(ps.push({n: np.full(16, i, np.float32)})
                                   for i, n in enumerate(names)))
            pulled = await asyncio.gather(*(ps.pull([n]) for n in names))
            return [p[n] for p, n in zip(pulled, names, strict=True)]

    values = asyncio.run(main())
    assert all(np.array_equal(v, np.full(16, i, np.float32)) for i, v in enumerate(values))
    # the 8 pushes in one message, the 8 pulls in another (init and hello went alone)
    assert server.run(lambda: server.server.core.state.counters["batches"]) == 2


def test_pushes_max_inflight_held_back_all_land_once(start_server) -> None:
    server = start_server(mode="async")
    names = [f"t{i}" for i in range(12)]
    with zps.Client([server.address], max_inflight=4, heartbeat_interval=0) as ps:
        ps.init({n: np.zeros(16, np.float32) for n in names})
        handles = [ps.push({n: np.ones(16, np.float32)}, wait=False) for n in names]
        for handle in handles:
            handle.wait()
        assert all(np.array_equal(v, np.ones(16, np.float32))
                   for v in ps.pull(names).values())
    counters = server.run(lambda: dict(server.server.core.state.counters))
    assert counters["pushes"] == len(names)


def test_a_client_reads_a_batch_of_replies_and_drops_a_malformed_one() -> None:
    """A fake server answers each pull with a batch: the first one announces a frame more
    than it carries (dropped, so the pull is sent again), the next is well formed."""
    value = np.arange(4, dtype=np.float32)

    def serve(router: zmq.Socket) -> None:
        pulls = 0
        while True:
            frames = router.recv_multipart()
            peer, head = frames[0], msgpack.unpackb(frames[1])
            reply: dict[str, Any] = {"v": PROTOCOL_VERSION, "r": head["r"],
                                     "i": {"sid": "fake", "batch": 8}}
            if head["op"] == "pull":
                pulls += 1
                other = msgpack.packb({"v": PROTOCOL_VERSION, "r": 10**6, "i": {}})
                reply["t"] = [["w", "float32", [4], 16]]
                counts = [1, 3] if pulls == 1 else [1, 2]
                router.send_multipart([peer, BATCH_PREFIX + msgpack.packb(counts), other,
                                       msgpack.packb(reply), value.tobytes()])
                continue
            if head["op"] == "init":
                reply["t"] = [["w", "float32", [4], 16]]
                router.send_multipart([peer, msgpack.packb(reply), np.zeros(4).astype(
                    np.float32).tobytes()])
                continue
            router.send_multipart([peer, msgpack.packb(reply)])
            if head["op"] == "bye":
                return

    with fake_server(serve) as address, zps.Client(
            [address], timeout=0.3, retries=3, heartbeat_interval=0) as ps:
        ps.init({"w": np.zeros(4, np.float32)})
        np.testing.assert_array_equal(ps.pull()["w"], value)
        assert ps.metrics()["retries"] == 1


def test_batches_stay_within_the_servers_message_limit(start_server) -> None:
    """Regression: 8 pushes of 60 KB, each within a server's 256 KiB limit, were joined
    into one batch over it, refused whole, and refused again on every retry."""
    server = start_server(mode="async", limits=Limits(max_message_bytes=256 << 10))
    names = [f"t{i}" for i in range(8)]
    value = np.ones(15_000, np.float32)

    async def main() -> None:
        async with zps.AsyncClient([server.address], heartbeat_interval=0, timeout=5) as ps:
            for name in names:
                await ps.init({name: np.zeros_like(value)})
            await asyncio.gather(*(ps.push({n: value}) for n in names))

    asyncio.run(main())
    assert all(np.array_equal(table(server, n), value) for n in names)
    assert server.run(lambda: server.server.core.state.counters["batches"]) >= 2


def test_a_request_of_a_batch_that_fails_inside_the_server_loses_no_other_reply(
        start_server, monkeypatch) -> None:
    from zps.server import app

    server, sock = _served(start_server)
    encode = app.encode_reply

    def failing(reply: Any) -> Any:
        if reply.request_id == 3:
            raise RuntimeError("a bug")
        return encode(reply)

    monkeypatch.setattr(app, "encode_reply", failing)
    one = np.ones(4, np.float32)
    sock.send_multipart(encode_batch([
        encode_request(Request(Op.HELLO, "raw", 1, options={"role": "worker"})),
        _push(2, "w", one), _push(3, "w", one), _push(4, "w", one)]))
    assert [r.request_id for r in _replies(sock)] == [1, 2, 4]
    assert np.array_equal(table(server, "w"), 3 * one)
    sock.close()
