"""The sans-IO wire protocol: round trips, validation, and fuzzing with hypothesis."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zps.errors import ProtocolError
from zps.protocol import (
    PROTOCOL_VERSION,
    Beat,
    DecodeError,
    Limits,
    Op,
    Replicated,
    Reply,
    Request,
    TensorMeta,
    decode_reply,
    decode_request,
    decode_stream,
    encode_beat,
    encode_change,
    encode_reply,
    encode_request,
)


def push_frames(arrays: dict[str, np.ndarray], rid: int = 7) -> list[Any]:
    metas = tuple(TensorMeta.of(n, a) for n, a in arrays.items())
    return encode_request(Request(Op.PUSH, "c1", rid, metas, buffers=tuple(arrays.values())))


def header(**fields: Any) -> bytes:
    base = {"v": PROTOCOL_VERSION, "op": "push", "c": "c1", "r": 3}
    base.update(fields)
    return msgpack.packb({k: v for k, v in base.items() if v is not None})


def test_push_round_trip_is_zero_copy_views() -> None:
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.ones(5, np.float64)
    frames = [bytes(memoryview(f)) for f in push_frames({"w": w, "b": b})]
    req = decode_request(frames)
    assert req.op is Op.PUSH and req.client_id == "c1" and req.request_id == 7
    arrays = req.arrays()
    np.testing.assert_array_equal(arrays["w"], w)
    np.testing.assert_array_equal(arrays["b"], b)
    assert arrays["w"].base is not None  # a view on the frame, not a copy


def test_pull_and_options_round_trip() -> None:
    req = Request(Op.PULL, "c", 1, names=("a", "b"), options={"role": "worker"})
    got = decode_request(encode_request(req))
    assert got.names == ("a", "b") and got.options == {"role": "worker"}


def test_reply_round_trip_with_error_and_tensors() -> None:
    a = np.ones((2, 2), np.float32)
    reply = Reply(5, (TensorMeta.of("a", a),), {"sid": "x"}, None, (a,))
    got = decode_reply(encode_reply(reply))
    assert got.ok and got.info == {"sid": "x"}
    np.testing.assert_array_equal(got.arrays()["a"], a)
    err = decode_reply(encode_reply(Reply(None, error=("bad_op", "nope"))))
    assert err.error == ("bad_op", "nope") and err.request_id is None


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([], "bad_frames"),
        ([b"\xc1garbage"], "bad_header"),
        ([msgpack.packb([1, 2])], "bad_header"),
        ([header(v=99)], "bad_version"),
        ([header(op="explode")], "bad_op"),
        ([header(c=5)], "bad_header"),
        ([header(r=-1)], "bad_header"),
        ([header(r="x")], "bad_header"),
        ([header(t=[["w", "int64", [2], 16]]), b"\0" * 16], "bad_dtype"),
        ([header(t=[["w", "float32", [2], 12]]), b"\0" * 12], "bad_shape"),
        ([header(t=[["w", "float32", [-2], 8]]), b"\0" * 8], "bad_shape"),
        ([header(t=[["w", "float32", [2], 8]])], "bad_frames"),
        ([header(t=[["w", "float32", [2], 8]]), b"\0" * 7], "bad_frames"),
        ([header(t=[["w", "float32", [2], 8]]), b"\0" * 8, b"extra"], "bad_frames"),
        ([header(t=[["", "float32", [2], 8]]), b"\0" * 8], "bad_name"),
        ([header(t=[["w", "float32", [1], 4], ["w", "float32", [1], 4]]), b"1234", b"1234"],
         "bad_header"),
        ([header()], "bad_header"),  # a push with no tensors
        ([header(op="pull", t=[["w", "float32", [1], 4]]), b"1234"], "bad_header"),
        ([header(o=[1])], "bad_header"),
    ],
)
def test_malformed_requests_are_rejected_with_a_named_problem(frames: list[Any], code: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_request(frames)
    assert info.value.code == code
    assert str(info.value)


def test_request_id_is_reported_when_the_header_got_that_far() -> None:
    with pytest.raises(DecodeError) as info:
        decode_request([header(r=42, t=[["w", "float32", [2], 8]]), b"\0" * 7])
    assert info.value.request_id == 42


def test_message_size_limit() -> None:
    frames = push_frames({"w": np.zeros(1024, np.float32)})
    with pytest.raises(DecodeError) as info:
        decode_request(frames, Limits(max_message_bytes=1000))
    assert info.value.code == "too_large"
    assert decode_request(frames, Limits(max_message_bytes=8192)).tensors[0].nbytes == 4096


# ---------------------------------------------------------------- hypothesis

wire_ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what msgpack can carry
wire_values = st.recursive(
    st.none() | st.booleans() | wire_ints | st.floats() | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=4),
    max_leaves=12,
)
header_maps = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([PROTOCOL_VERSION, 0, 2, "1"]),
        "op": st.sampled_from([o.value for o in Op] + ["", "nop", 3]),
        "c": st.text(max_size=6) | wire_ints,
        "r": st.integers(min_value=-5, max_value=2**64 - 1) | st.text(max_size=3),
        "t": st.lists(
            st.lists(wire_values, max_size=5)
            | st.tuples(st.text(max_size=3), st.sampled_from(["float32", "float64", "int8", 1]),
                        st.lists(st.integers(-2, 5), max_size=3), st.integers(-1, 100)).map(list),
            max_size=3,
        ) | wire_values,
        "n": st.lists(wire_values, max_size=3) | wire_values,
        "o": wire_values,
    },
)


@settings(max_examples=400, deadline=None)
@given(header_maps, st.lists(st.binary(max_size=64), max_size=4))
def test_random_headers_and_frames_only_raise_protocol_errors(
    fields: dict[str, Any], buffers: list[bytes]
) -> None:
    try:
        req = decode_request([msgpack.packb(fields), *buffers])
    except ProtocolError:
        return
    # Whatever got through is internally consistent.
    assert len(req.buffers) == len(req.tensors)
    for meta, buf in zip(req.tensors, req.buffers, strict=True):
        assert len(buf) == meta.nbytes
        req.arrays()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40), min_size=0, max_size=5))
def test_random_bytes_only_raise_protocol_errors(frames: list[bytes]) -> None:
    with contextlib.suppress(ProtocolError):
        decode_request(frames)


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=10),
        st.tuples(st.sampled_from(["float32", "float64"]),
                  st.lists(st.integers(0, 4), max_size=3)),
        min_size=1, max_size=4,
    )
)
def test_valid_pushes_round_trip_exactly(specs: dict[str, tuple[str, list[int]]]) -> None:
    rng = np.random.default_rng(0)
    arrays = {n: rng.standard_normal(shape).astype(dt) for n, (dt, shape) in specs.items()}
    got = decode_request(push_frames(arrays)).arrays()
    for name, array in arrays.items():
        assert got[name].dtype == array.dtype and got[name].shape == array.shape
        np.testing.assert_array_equal(got[name], array)


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({}, optional={
    "v": st.sampled_from([PROTOCOL_VERSION, 2]), "r": wire_values, "e": wire_values,
    "i": wire_values, "t": wire_values}), st.lists(st.binary(max_size=16), max_size=2))
def test_random_replies_only_raise_protocol_errors(fields: dict[str, Any],
                                                    buffers: list[bytes]) -> None:
    with contextlib.suppress(ProtocolError):
        reply = decode_reply([msgpack.packb(fields), *buffers])
        assert reply.request_id is None or isinstance(reply.request_id, int)
        assert isinstance(reply.info, dict)


def test_protocol_version_true_is_not_version_one() -> None:
    """Regression: msgpack booleans passed the integer check, so version True read as 1."""
    frames = [msgpack.packb({"v": True, "op": "pull", "c": "c", "r": 1, "n": ["w"]})]
    with pytest.raises(DecodeError) as info:
        decode_request(frames)
    assert info.value.code == "bad_version"


def test_a_header_with_a_huge_shape_is_refused_before_anything_is_multiplied() -> None:
    """Regression: a sub-1-MiB compressed header with ~100k shape dimensions stalled the
    event loop for seconds (the size check multiplied them first)."""
    shape = [2**39] * 100_000
    frames = [msgpack.packb({"v": PROTOCOL_VERSION, "op": "push", "c": "c", "r": 1, "w": 1,
                             "z": [["w", "int8", {}, "float32", shape, [["int8", 4]]]]}),
              b"\0" * 4]
    assert len(frames[0]) < 1 << 20
    started = time.perf_counter()
    with pytest.raises(DecodeError) as info:
        decode_request(frames)
    assert info.value.code == "bad_shape" and time.perf_counter() - started < 1.0


@pytest.mark.parametrize("watermark", [True, -1, 8, "1", 2**63])
def test_a_watermark_above_the_request_id_or_not_an_int_is_refused(watermark: Any) -> None:
    frames = [msgpack.packb({"v": PROTOCOL_VERSION, "op": "pull", "c": "c", "r": 7,
                             "w": watermark, "n": ["w"]})]
    with pytest.raises(DecodeError, match="watermark"):
        decode_request(frames)


def test_stream_changes_and_beats_round_trip() -> None:
    update = np.arange(6, dtype=np.float32)
    change = Replicated(5, 2, "w", 3, "apply", 0.5, (("c", 10, 9),), {"x": 1},
                        TensorMeta.of("w", update), None, (update,))
    got = decode_stream([bytes(memoryview(f)) for f in encode_change(change)])
    assert isinstance(got, Replicated)
    assert (got.seq, got.epoch, got.table, got.version, got.scale, got.requests, got.meta) \
        == (5, 2, "w", 3, 0.5, (("c", 10, 9),), {"x": 1})
    np.testing.assert_array_equal(got.dense(), update)
    assert decode_stream(encode_beat(Beat(7, 3))) == Beat(7, 3)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=0, max_size=4),
       st.dictionaries(st.sampled_from(["v", "s", "e", "n", "ver", "k", "g", "q", "m", "t", "z"]),
                       st.none() | st.booleans() | st.integers(-5, 2**64 - 1) | st.text(max_size=4)
                       | st.lists(st.integers(-1, 9), max_size=3), max_size=11))
def test_malformed_stream_messages_raise_only_decode_errors(buffers: list[bytes],
                                                            fields: dict[str, Any]) -> None:
    for topic in (b"c", b"h", b"x"):
        with contextlib.suppress(DecodeError):
            decode_stream([topic, msgpack.packb({"v": PROTOCOL_VERSION, **fields}), *buffers])
