"""Codecs (sans-IO): error bounds, shapes, edge cases, unbiasedness, error feedback."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from zps.codecs import (
    CODECS,
    Encoded,
    ErrorFeedback,
    Int8Codec,
    TopKCodec,
    check_parts,
    decode,
    make_codec,
)
from zps.errors import ProtocolError

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)
tensors = arrays(np.float32, array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=40),
                 elements=finite)


@settings(max_examples=150, deadline=None)
@given(tensors, st.sampled_from(CODECS))
def test_shapes_and_dtypes_survive_every_codec(x: np.ndarray, name: str) -> None:
    codec = make_codec(name)
    encoded = codec.encode(np, x)
    check_parts(codec, encoded)
    out = decode(codec, encoded)
    assert out.shape == x.shape and out.dtype == x.dtype


@settings(max_examples=150, deadline=None)
@given(tensors)
def test_none_is_exact_and_fp16_within_half_precision(x: np.ndarray) -> None:
    np.testing.assert_array_equal(decode(make_codec("none"), make_codec("none").encode(np, x)), x)
    half = decode(make_codec("fp16"), make_codec("fp16").encode(np, x))
    assert np.all(np.abs(half - x) <= np.abs(x) * 2.0**-11 + 2.0**-24)


@settings(max_examples=150, deadline=None)
@given(tensors, st.sampled_from([8, 64, 256]))
def test_int8_error_is_at_most_one_step_of_its_block(x: np.ndarray, block: int) -> None:
    codec = Int8Codec(block, seed=1)
    out = decode(codec, codec.encode(np, x)).reshape(-1)
    flat = x.reshape(-1)
    for start in range(0, flat.size, block):
        step = np.abs(flat[start:start + block]).max() / 127
        assert np.all(np.abs(out[start:start + block] - flat[start:start + block])
                      <= step * (1 + 1e-5) + 1e-30)


@settings(max_examples=100, deadline=None)
@given(tensors)
def test_sign_sends_the_sign_times_the_block_mean(x: np.ndarray) -> None:
    codec = make_codec("sign:8")
    out = decode(codec, codec.encode(np, x)).reshape(-1)
    flat = x.reshape(-1)
    for start in range(0, flat.size, 8):
        part = flat[start:start + 8]
        expected = np.where(part >= 0, 1, -1) * np.abs(part).mean()
        np.testing.assert_allclose(out[start:start + 8], expected, rtol=1e-5, atol=1e-6)


@settings(max_examples=100, deadline=None)
@given(tensors, st.sampled_from([0.01, 0.1, 0.5, 1.0]))
def test_topk_keeps_the_largest_values_exactly(x: np.ndarray, ratio: float) -> None:
    codec = TopKCodec(ratio)
    encoded = codec.encode(np, x)
    out = decode(codec, encoded).reshape(-1)
    flat = x.reshape(-1)
    kept = out != 0
    assert int(kept.sum()) <= codec.k_for(flat.size)
    np.testing.assert_array_equal(out[kept], flat[kept])
    if flat.size:
        dropped = np.abs(flat[~kept & (flat != 0)])
        assert dropped.size == 0 or dropped.max() <= np.abs(flat[kept]).min() + 1e-30 or \
            not kept.any()


@pytest.mark.parametrize("name", ["fp16", "int8", "sign", "topk"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_lossy_codecs_refuse_nan_and_inf(name: str, bad: float) -> None:
    with pytest.raises(ValueError, match="NaN or inf"):
        make_codec(name).encode(np, np.array([1.0, bad], np.float32))


@pytest.mark.parametrize("name", CODECS)
def test_empty_and_single_element_tensors(name: str) -> None:
    codec = make_codec(name)
    for x in (np.zeros(0, np.float32), np.array(3.5, np.float32), np.array([-2.0], np.float32)):
        out = decode(codec, codec.encode(np, x))
        assert out.shape == x.shape
        if name in ("none", "fp16", "topk", "sign"):
            np.testing.assert_allclose(out, x)


def test_int8_stochastic_rounding_is_unbiased() -> None:
    codec = Int8Codec(block=64, seed=7)
    x = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    draws = 4000
    mean = np.mean([decode(codec, codec.encode(np, x)) for _ in range(draws)], axis=0)
    step = np.abs(x).max() / 127
    # Each draw errs by at most one step, uniformly: the mean is within 5 sigma of x.
    assert np.all(np.abs(mean - x) <= 5 * step / np.sqrt(draws) + 1e-6)


@pytest.mark.parametrize("name", ["int8", "sign", "topk:0.1", "fp16"])
def test_error_feedback_keeps_the_running_sum(name: str) -> None:
    rng = np.random.default_rng(3)
    feedback = ErrorFeedback(make_codec(name), np)
    true_sum = np.zeros(200, np.float32)
    sent_sum = np.zeros(200, np.float32)
    norms = []
    for step in range(400):
        delta = rng.standard_normal(200).astype(np.float32)
        true_sum += delta
        sent_sum += decode(feedback.codec, feedback.encode("w", delta))
        if step in (199, 399):
            norms.append(float(np.linalg.norm(true_sum - sent_sum)))
    residual = feedback.residuals["w"]
    np.testing.assert_allclose(true_sum - sent_sum, residual, atol=1e-2)
    # Bounded: no growth from step 200 to step 400, and small against the sum itself.
    assert norms[1] <= 2 * norms[0] + 1e-3
    assert norms[1] < 0.5 * np.sqrt(400) * np.sqrt(200)


@settings(max_examples=80, deadline=None)
@given(tensors, st.sampled_from(CODECS), st.sampled_from([1.0, 0.5, -2.0]))
def test_fused_decode_add_equals_decode_then_add(x: np.ndarray, name: str, scale: float) -> None:
    codec = make_codec(name)
    encoded = codec.encode(np, x)
    base = np.linspace(-1, 1, x.size, dtype=np.float32).reshape(x.shape)
    fused = base.copy()
    codec.decode_add(encoded, fused, scale)
    np.testing.assert_allclose(fused, base + np.float32(scale) * decode(codec, encoded),
                               rtol=1e-6, atol=1e-6)


def test_wire_checks_catch_wrong_buffers() -> None:
    codec = make_codec("int8")
    good = codec.encode(np, np.ones(300, np.float32))
    short = Encoded("int8", (300,), "float32", (good.parts[0][:10], good.parts[1]), good.params)
    with pytest.raises(ProtocolError, match="buffer 0"):
        check_parts(codec, short)
    wrong = Encoded("int8", (300,), "float32", (good.parts[0].view(np.uint8), good.parts[1]),
                    good.params)
    with pytest.raises(ProtocolError):
        check_parts(codec, wrong)
    topk = make_codec("topk")
    bad_index = Encoded("topk", (5,), "float32",
                        (np.array([7], np.int32), np.ones(1, np.float32)), {"k": 1})
    with pytest.raises(ProtocolError, match="out of range"):
        topk.decode_add(bad_index, np.zeros(5, np.float32))
    with pytest.raises(ProtocolError, match="k must be"):
        check_parts(topk, Encoded("topk", (5,), "float32", (), {"k": 9}))
    with pytest.raises(ValueError):
        make_codec("zip")
