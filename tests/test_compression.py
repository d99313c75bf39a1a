"""Compressed pushes and delta pulls over real ZeroMQ sockets on random 127.0.0.1 ports."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
import zmq

import zps
from zps.codecs import Encoded, make_codec
from zps.protocol import EncodedMeta, Op, Request, decode_reply, encode_request

from .conftest import run_cli
from .test_client_server import raw_dealer, raw_request, table

SHAPE = (64, 50)


def start_values() -> np.ndarray:
    return np.random.default_rng(7).standard_normal(SHAPE).astype(np.float32)


def meta_of(name: str, enc: Encoded) -> EncodedMeta:
    return EncodedMeta(name, enc.codec, enc.params, enc.dtype, enc.shape,
                       tuple((p.dtype.name, int(p.nbytes)) for p in enc.parts))


def send_encoded(sock: zmq.Socket, rid: int, name: str, enc: Encoded,
                 op: Op = Op.PUSH, **kw: Any) -> Any:
    kw.setdefault("watermark", rid)
    request = Request(op, "raw", rid, encoded=(meta_of(name, enc),), buffers=enc.parts, **kw)
    sock.send_multipart(encode_request(request))
    return decode_reply(sock.recv_multipart())


@pytest.mark.parametrize("codec", ["none", "fp16", "int8", "int8:64", "sign", "topk:0.1"])
def test_each_codec_through_the_server(start_server, codec: str) -> None:
    server = start_server(mode="async")
    theta0 = start_values()
    delta = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    with zps.Client([server.address], codec=codec, error_feedback=False) as ps:
        ps.init({"w": theta0})
        ps.push({"w": delta})
        got = ps.pull()["w"]
        info = ps.stats()[0]["tables"][0]
    # What the server added is exactly one decoded copy of the pushed update: check it
    # against the codec's own bound for this delta.
    applied = got - theta0  # up to float32 rounding of the subtraction (atol 1e-6)
    if codec == "none":
        np.testing.assert_array_equal(got, theta0 + delta)
    elif codec == "fp16":
        np.testing.assert_allclose(applied, delta, rtol=1e-3, atol=1e-5)
    elif codec.startswith("int8"):
        block = int(codec.partition(":")[2] or 256)
        scale = np.abs(delta).max() / 127
        assert np.abs(applied - delta).max() <= scale * 1.01 + 1e-6, block
        assert np.abs(applied - delta).max() > 0  # it did travel quantized
    elif codec == "sign":
        assert (np.sign(applied) == np.sign(delta)).mean() > 0.99
    else:  # topk keeps the largest 10% exactly and drops the rest
        kept = got != theta0
        assert kept.sum() == int(np.ceil(delta.size * 0.1))
        np.testing.assert_allclose(applied[kept], delta[kept], atol=1e-6)
        assert np.abs(delta[kept]).min() >= np.abs(delta[~kept]).max()
    expected_ratio = {"none": 1, "fp16": 2, "int8": 3.9, "int8:64": 3.7, "sign": 20,
                      "topk:0.1": 4.9}[codec]
    assert info["compression"] >= expected_ratio


def test_sync_mean_of_compressed_pushes(start_server) -> None:
    server = start_server(mode="sync", workers=3)
    theta0 = start_values()
    rng = np.random.default_rng(2)
    deltas = [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(3)]
    codecs = ["fp16", "none", "topk:0.5"]
    clients = [zps.Client([server.address], codec=c, error_feedback=False) for c in codecs]
    try:
        for c in clients:
            c.init({"w": theta0})
        results: list[np.ndarray] = [np.empty(0)] * 3

        def worker(i: int) -> None:
            results[i] = clients[i].push_pull({"w": deltas[i]})["w"]

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        decoded = []
        for codec, d in zip(codecs, deltas, strict=True):
            c = make_codec(codec)
            out = np.zeros_like(d)
            c.decode_add(c.encode(np, d), out)
            decoded.append(out)
        expected = theta0 + np.mean(decoded, axis=0)
        for r in results:
            np.testing.assert_allclose(r, expected, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(r, results[0])
    finally:
        for c in clients:
            c.close()


def test_bad_codec_payloads_are_refused_and_change_nothing(start_server) -> None:
    server = start_server(mode="async")
    theta0 = start_values()
    with zps.Client([server.address]) as ps:
        ps.init({"w": theta0})
    good = make_codec("topk:0.1").encode(np, np.ones(SHAPE, np.float32))
    idx, values = good.parts
    out_of_range = idx.copy()
    out_of_range[-1] = theta0.size
    short = make_codec("int8").encode(np, np.ones(SHAPE, np.float32))
    nan = make_codec("fp16").encode(np, np.ones(SHAPE, np.float32))
    nan_parts = (np.full_like(nan.parts[0], np.nan),)
    bad = {
        "unknown codec": (Encoded("zip", SHAPE, "float32", good.parts, good.params),
                          "bad_header"),
        "index out of range": (Encoded("topk", SHAPE, "float32", (out_of_range, values),
                                       good.params), "bad_frames"),
        "short buffer": (Encoded("int8", SHAPE, "float32", (short.parts[0][:-1],
                                                            *short.parts[1:]),
                                 short.params), "bad_frames"),
        "nan": (Encoded("fp16", SHAPE, "float32", nan_parts, nan.params), "bad_frames"),
        "wrong shape": (Encoded("int8", (SHAPE[0] + 1, SHAPE[1]), "float32", short.parts,
                                short.params), "shape_mismatch"),
    }
    sock = raw_dealer(server.address)
    try:
        for rid, (what, (enc, code)) in enumerate(bad.items(), start=1):
            reply = send_encoded(sock, rid, "w", enc)
            assert reply.error is not None and reply.error[0] == code, what
            np.testing.assert_array_equal(table(server, "w"), theta0)
        reply = send_encoded(sock, 99, "w", good)  # the same socket keeps being served
        assert reply.ok
    finally:
        sock.close()
    assert server.run(lambda: server.server.core.store.get("w").version) == 1


def test_delta_pulls_stay_exact_over_many_rounds_and_a_long_absence(start_server) -> None:
    # A short log: a worker that misses more than 8 changes gets the whole table.
    server = start_server(mode="async", log_entries=8)
    theta0 = start_values()
    rng = np.random.default_rng(3)
    with (zps.Client([server.address], codec="int8") as pusher,
          zps.Client([server.address], pull_codec="none") as reader):
        for c in (pusher, reader):
            c.init({"w": theta0, "b": np.zeros(3, np.float32)})
        for step in range(40):
            pusher.push({"w": rng.standard_normal(SHAPE), "b": np.ones(3)})
            if step % 3 == 0:
                got = reader.pull()
                for name in ("w", "b"):
                    np.testing.assert_array_equal(got[name], table(server, name))
        for _ in range(30):  # far behind: more changes than the log keeps
            pusher.push({"w": rng.standard_normal(SHAPE)})
        np.testing.assert_array_equal(reader.pull()["w"], table(server, "w"))
        pusher.push({"w": rng.standard_normal(SHAPE)})
        got = reader.push_pull({"b": np.ones(3)})
        np.testing.assert_array_equal(got["b"], table(server, "b"))
        np.testing.assert_array_equal(reader.pull()["w"], table(server, "w"))
        info = reader.stats()[0]["tables"]
    w = next(t for t in info if t["name"] == "w")
    assert w["pull_compression"] > 1.1  # the int8 changes went out as they came in


def test_lossy_delta_pulls_have_bounded_error_and_full_refresh(start_server) -> None:
    server = start_server(mode="sync", workers=1)
    theta0 = start_values()
    rng = np.random.default_rng(4)
    every = 5
    with zps.Client([server.address], pull_codec="int8", full_pull_every=every) as ps:
        ps.init({"w": theta0})
        ps.pull()  # the first pull is whole
        for step in range(2, 16):
            delta = rng.standard_normal(SHAPE).astype(np.float32) * 0.1
            got = ps.push_pull({"w": delta})["w"]
            exact = table(server, "w")
            if step % every == 0:
                np.testing.assert_array_equal(got, exact)
            else:
                # int8 error per change is at most one step (max|delta|/127) per element;
                # at most every-1 changes accumulate before a refresh.
                bound = (every - 1) * np.abs(delta).max() * 4 / 127
                assert np.abs(got - exact).max() <= bound
        info = ps.stats()[0]["tables"][0]
    assert info["pull_compression"] > 2


def test_bad_delta_pull_options_are_refused(start_server) -> None:
    server = start_server(mode="async")
    with zps.Client([server.address]) as ps:
        ps.init({"w": np.zeros(4, np.float32)})
    sock = raw_dealer(server.address)
    try:
        for rid, options in enumerate([{"have": {"w": -1}}, {"have": {"v": 0}},
                                       {"have": [0]}, {"pull_codec": "zip"},
                                       {"pull_codec": 3}], start=1):
            reply = raw_request(sock, Op.PULL, rid, names=("w",), options=options)
            assert reply.error is not None and reply.error[0] == "bad_header", options
        reply = raw_request(sock, Op.PUSH_PULL, 20, arrays={"w": np.ones(4, np.float32)},
                            options={"have": {"w": "x"}})
        assert reply.error is not None and reply.error[0] == "bad_header"
        np.testing.assert_array_equal(table(server, "w"), 0)  # the push was not applied
    finally:
        sock.close()


def test_async_client_compresses_and_pulls_deltas(start_server) -> None:
    import asyncio

    server = start_server(mode="async")
    theta0 = start_values()

    async def main() -> tuple[np.ndarray, np.ndarray]:
        async with zps.AsyncClient([server.address], codec="fp16", pull_codec="none") as ps:
            await ps.init({"w": theta0})
            await ps.pull()
            delta = np.full(SHAPE, 0.5, np.float32)
            await asyncio.gather(ps.push({"w": delta}), ps.pull(), ps.pull())
            return (await ps.pull())["w"], theta0 + delta

    got, want = asyncio.run(main())
    np.testing.assert_array_equal(got, want)  # 0.5 is exact in fp16
    np.testing.assert_array_equal(got, table(server, "w"))


def test_worker_cli_refuses_unknown_codecs() -> None:
    for flag in ("--codec", "--pull-codec"):
        result = run_cli("zps.cli.worker_main", "--servers", "tcp://127.0.0.1:1", flag, "zip")
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and flag in result.stderr, result.stderr
