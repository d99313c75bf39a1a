"""Codecs (sans-IO): error bounds, shapes, edge cases, unbiasedness, error feedback."""

from __future__ import annotations

import tracemalloc
from typing import Any, cast

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from zps.codecs import (
    CODECS,
    CodecError,
    Compressed,
    Encoded,
    ErrorFeedback,
    FeedbackCodec,
    Int8Codec,
    TopKCodec,
    add_scaled,
    check_parts,
    decode,
    make_codec,
)
from zps.codecs.kernels import use_kernels
from zps.errors import ProtocolError

F32_MAX = float(np.finfo(np.float32).max)
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
    with pytest.raises(CodecError, match="buffer 0") as caught:
        check_parts(codec, short)
    assert caught.value.code == "bad_frames" and isinstance(caught.value, ProtocolError)
    wrong = Encoded("int8", (300,), "float32", (good.parts[0].view(np.uint8), good.parts[1]),
                    good.params)
    with pytest.raises(CodecError):
        check_parts(codec, wrong)
    topk = make_codec("topk")
    bad_index = Encoded("topk", (5,), "float32",
                        (np.array([7], np.int32), np.ones(1, np.float32)), {"k": 1})
    with pytest.raises(CodecError, match="out of range"):
        topk.decode_add(bad_index, np.zeros(5, np.float32))
    with pytest.raises(CodecError, match="k must be") as caught:
        check_parts(topk, Encoded("topk", (5,), "float32", (), {"k": 9}))
    assert caught.value.code == "bad_header"
    with pytest.raises(ValueError):
        make_codec("zip")


# ---------------------------------------------------------------- fused error feedback

LOSSY = ("fp16", "int8:8", "int8", "sign:8", "sign", "topk:0.1", "topk:1")


def _same_bits(a: np.ndarray, b: np.ndarray) -> None:
    """Equal bit for bit, but for the sign of zero (0 - 0 and -0 - -0 differ there)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal((a.reshape(-1) + 0).view(np.uint8),
                                  (b.reshape(-1) + 0).view(np.uint8))


def _same_encoding(a: Encoded, b: Encoded) -> None:
    assert (a.codec, a.shape, a.dtype, a.params) == (b.codec, b.shape, b.dtype, b.params)
    for x, y in zip(a.parts, b.parts, strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x.view(np.uint8), y.view(np.uint8))


class UnfusedFeedback:
    """Error feedback as it was: ``e' = (delta + e) - decode(encode(delta + e))``, the
    encoding that of ``encode_feedback`` (int8 rounds to nearest there), on a copy."""

    def __init__(self, codec: Any) -> None:
        self.codec = codec
        self.residual: np.ndarray | None = None

    def encode(self, delta: np.ndarray) -> Encoded:
        compensated = delta.copy() if self.residual is None else delta + self.residual
        encoded = self.codec.encode_feedback(np, compensated.copy())
        self.residual = compensated - decode(self.codec, encoded)
        return encoded


def nearest_int8(plain: Encoded, x: np.ndarray) -> Encoded:
    """What int8's ``encode_feedback`` sends for ``x``: ``encode``'s scales, and the codes
    rounded to nearest (ties to even) instead of stochastically."""
    scales = plain.parts[1]
    block = plain.params["block"]
    s = np.repeat(scales, block)[:x.size].astype(x.dtype)
    q = np.clip(np.rint(x.reshape(-1) / np.where(s > 0, s, 1)), -127, 127).astype(np.int8)
    return Encoded(plain.codec, plain.shape, plain.dtype, (q, scales), plain.params)


wide = st.floats(-F32_MAX, F32_MAX, allow_nan=False, allow_infinity=False, width=32)
any_tensors = st.one_of(tensors, arrays(np.float32, st.integers(0, 600), elements=wide),
                        arrays(np.float64, array_shapes(max_dims=2, max_side=30),
                               elements=finite))


@settings(max_examples=150, deadline=None)
@given(any_tensors, st.sampled_from(LOSSY))
def test_encode_feedback_sends_what_encode_sends_and_leaves_the_error(
        x: np.ndarray, spec: str) -> None:
    plain, fused = make_codec(spec, seed=11), make_codec(spec, seed=11)
    expected = plain.encode(np, x)
    if spec.startswith("int8"):
        expected = nearest_int8(expected, x)
    buf = x.copy()
    encoded = fused.encode_feedback(np, buf)  # type: ignore[attr-defined]
    _same_encoding(encoded, expected)
    _same_bits(buf, x - decode(plain, expected))


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(LOSSY), st.integers(0, 300), st.integers(0, 2**32 - 1),
       st.sampled_from([np.float32, np.float64]))
def test_error_feedback_matches_the_unfused_path_push_after_push(
        spec: str, size: int, seed: int, dtype: type) -> None:
    rng = np.random.default_rng(seed)
    fused = ErrorFeedback(make_codec(spec, seed=seed), np)
    unfused = UnfusedFeedback(make_codec(spec, seed=seed))
    for _ in range(4):
        delta: np.ndarray = (rng.standard_normal(size) * 10.0 ** rng.integers(-3, 4)).astype(dtype)
        _same_encoding(fused.encode("w", delta), unfused.encode(delta))
        assert unfused.residual is not None
        _same_bits(fused.residuals["w"], unfused.residual)


def test_topk_feedback_zeroes_exactly_the_sent_values() -> None:
    x = np.array([[0.5, -3.0, 0.1], [2.0, -0.2, 0.0]], np.float32)
    buf = x.copy()
    encoded = TopKCodec(0.33).encode_feedback(np, buf)
    np.testing.assert_array_equal(encoded.parts[0], [1, 3])
    np.testing.assert_array_equal(buf, np.array([[0.5, 0, 0.1], [0, -0.2, 0]], np.float32))


def test_feedback_residual_is_one_buffer_kept_per_name() -> None:
    feedback = ErrorFeedback(make_codec("int8"), np)
    delta = np.ones((3, 4), np.float32)
    feedback.encode("w", delta)
    residual = feedback.residuals["w"]
    assert residual is not delta and residual.shape == (3, 4) and residual.flags.c_contiguous
    feedback.encode("w", delta)
    assert feedback.residuals["w"] is residual
    with pytest.raises(ValueError, match="same shape"):
        feedback.encode("w", np.ones(12, np.float32))
    assert ErrorFeedback(make_codec("none"), np).residuals == {}
    lossless = ErrorFeedback(make_codec("none"), np)
    lossless.encode("w", delta)
    assert lossless.residuals == {}


@pytest.mark.parametrize("name", ["fp16", "int8", "sign", "topk"])
def test_refused_input_leaves_the_residual_alone(name: str) -> None:
    feedback = ErrorFeedback(make_codec(name), np)
    feedback.encode("w", np.arange(10, dtype=np.float32))
    before = feedback.residuals["w"].copy()
    with pytest.raises(ValueError, match="NaN or inf"):
        feedback.encode("w", np.full(10, np.nan, np.float32))
    np.testing.assert_array_equal(feedback.residuals["w"], before)
    buf = np.array([1.0, np.inf], np.float32)
    with pytest.raises(ValueError, match="NaN or inf"):
        make_codec(name).encode_feedback(np, buf)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(buf, [1.0, np.inf])


@pytest.mark.parametrize("name", ["fp16", "int8", "sign", "topk"])
def test_feedback_buffers_must_be_writable_contiguous_floats(name: str) -> None:
    codec = make_codec(name)
    for buf in (np.ones((4, 4), np.float32).T, np.ones(4, np.float32)[::2],
                np.frombuffer(np.ones(4, np.float32).tobytes(), np.float32),
                np.ones(4, np.int32)):
        with pytest.raises(ValueError, match="writable, C-contiguous float"):
            codec.encode_feedback(np, buf)  # type: ignore[attr-defined]


# ---------------------------------------------------------------- near float32's limit

def _huge(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.choice([3e38, -3e38, F32_MAX, -F32_MAX, 3e37, 0.0, 1.0], size)
    return values.astype(np.float32)


@pytest.mark.parametrize("spec", LOSSY)
@pytest.mark.parametrize("feedback", [True, False])
def test_values_near_float32_max_stay_finite_push_after_push(spec: str, feedback: bool) -> None:
    codec = make_codec(spec, seed=2)
    ef = ErrorFeedback(codec, np)
    for push in range(6):
        delta = _huge(1000, push)
        encoded = ef.encode("w", delta) if feedback else codec.encode(np, delta)
        check_parts(codec, encoded)  # scales finite, else this refuses them
        assert np.isfinite(decode(codec, encoded)).all()
        if feedback:
            assert np.isfinite(ef.residuals["w"]).all()


def test_sign_block_mean_of_huge_values_is_finite() -> None:
    x = np.full(256, 3e37, np.float32)
    encoded = make_codec("sign").encode(np, x)
    np.testing.assert_allclose(encoded.parts[1], [3e37], rtol=1e-6)
    np.testing.assert_allclose(decode(make_codec("sign"), encoded), x, rtol=1e-6)


@settings(max_examples=100, deadline=None)
@given(arrays(np.float32, st.integers(1, 300), elements=wide), st.sampled_from([8, 64, 256]))
def test_int8_never_decodes_beyond_its_block_max(x: np.ndarray, block: int) -> None:
    codec = Int8Codec(block, seed=0)
    out = decode(codec, codec.encode(np, x))
    for start in range(0, x.size, block):
        top = np.abs(x[start:start + block]).max()
        assert np.abs(out[start:start + block]).max() <= top


@pytest.mark.parametrize("name", ["int8", "sign"])
def test_float64_beyond_float32_range_is_refused_by_block_scales(name: str) -> None:
    with pytest.raises(ValueError, match="beyond float32"):
        make_codec(name).encode(np, np.array([1.0, 1e300], np.float64))


# ---------------------------------------------------------------- applying updates

scales_st = st.one_of(st.sampled_from([1.0, 0.5, -2.0, 1 / 3]),
                      st.floats(-1e3, 1e3, allow_nan=False).map(np.float64))


@settings(max_examples=150, deadline=None)
@given(arrays(np.float32, array_shapes(min_dims=0, max_dims=3, max_side=30), elements=finite),
       st.sampled_from([np.float32, np.float64]), st.sampled_from([np.float32, np.float64]),
       scales_st, st.booleans())
def test_add_scaled_gives_the_bits_of_the_one_shot_expression(
        x: np.ndarray, out_dtype: type, update_dtype: type, scale: float, with_base: bool) -> None:
    base: np.ndarray = x.astype(out_dtype)
    update = (x[::-1] if x.ndim else x).astype(update_dtype) * update_dtype(0.7)
    expected = base.copy()
    if scale != 1.0:
        expected += np.multiply(update, scale, dtype=expected.dtype)
    else:
        np.add(expected, update, out=expected)
    if with_base:
        out = np.full_like(base, 5.0)
        add_scaled(out, update, scale, base=base)
    else:
        out = base.copy()
        add_scaled(out, update, scale)
    _same_bits(out, expected)


def _reference(encoded: Encoded, dtype: Any) -> np.ndarray:
    """The decoded values as the unblocked decoders computed them, in ``dtype``."""
    n, first = encoded.size, np.asarray(encoded.parts[0])
    if encoded.codec in ("none", "fp16"):
        return first.astype(dtype)
    if encoded.codec == "topk":
        dense = np.zeros(n, dtype)
        dense[first] = encoded.parts[1]
        return dense
    scales = np.repeat(encoded.parts[1], encoded.params["block"])[:n].astype(dtype)
    if encoded.codec == "int8":
        return first.astype(dtype) * scales
    return (np.unpackbits(first)[:n].astype(dtype) * 2 - 1) * scales


@pytest.mark.parametrize("spec", ["none", "fp16", "int8:8", "int8", "int8:65536", "sign:8",
                                  "sign", "sign:65536", "topk:0.3"])
@pytest.mark.parametrize("scale", [1.0, 0.37])
def test_blocked_decode_add_gives_the_bits_of_the_unblocked_one(spec: str, scale: float) -> None:
    # More than one chunk of values, and a last block of 3.
    x = np.random.default_rng(4).standard_normal((1 << 18) + 65536 + 3).astype(np.float32)
    codec = make_codec(spec, seed=1)
    encoded = codec.encode(np, x)
    base = np.linspace(-1, 1, x.size, dtype=np.float32)
    expected = base.copy()
    values = _reference(encoded, np.float32)
    if scale != 1.0:
        values *= np.float32(scale)
    expected += values
    out = base.copy()
    codec.decode_add(encoded, out, scale)
    _same_bits(out, expected)
    double = np.empty_like(base)
    add_scaled(double, Compressed(codec, encoded), scale, base=base)
    _same_bits(double, expected)


def test_add_scaled_base_must_be_a_separate_array_of_the_same_kind() -> None:
    out = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match="overlap"):
        add_scaled(out[:4], np.ones(4, np.float32), 0.5, base=out[2:6])
    with pytest.raises(ValueError, match="does not match"):
        add_scaled(out, np.ones(8, np.float32), 0.5, base=np.zeros(8, np.float64))
    add_scaled(out, np.ones(8, np.float32), 0.5, base=out)  # the same array: in place
    np.testing.assert_array_equal(out, np.full(8, 0.5, np.float32))


@pytest.mark.parametrize("name", CODECS)
def test_decode_add_refuses_an_output_it_would_copy(name: str) -> None:
    codec = make_codec(name)
    encoded = codec.encode(np, np.ones((4, 4), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        codec.decode_add(encoded, np.zeros((4, 4), np.float32).T)


def _peak_bytes(run: Any) -> int:
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("spec", ["fp16", "int8", "int8:65536", "sign", "sign:65536"])
@pytest.mark.parametrize("kernels", [True, False])
def test_encoding_and_decoding_need_no_full_size_temporary(spec: str, kernels: bool) -> None:
    previous = use_kernels(kernels)  # the NumPy code, and the compiled kernels where numba is
    try:
        _check_no_full_size_temporary(spec)
    finally:
        use_kernels(previous)


def _check_no_full_size_temporary(spec: str) -> None:
    # 2**22 + 9 values: 16 MiB of float32, and a last block that is not whole.
    x = np.random.default_rng(5).standard_normal((1 << 22) + 9).astype(np.float32)
    codec = cast(FeedbackCodec, make_codec(spec))
    encoded = codec.encode(np, x)
    payload = encoded.nbytes
    chunk_bytes = (1 << 18) * 8  # a chunk of float64
    assert _peak_bytes(lambda: codec.encode(np, x)) < payload + 2 * chunk_bytes
    buf = x.copy()
    assert _peak_bytes(lambda: codec.encode_feedback(np, buf)) < payload + 2 * chunk_bytes
    assert _peak_bytes(lambda: codec.encode_feedback(np, buf, x)) < payload + 2 * chunk_bytes
    out = np.zeros_like(x)
    assert _peak_bytes(lambda: codec.decode_add(encoded, out, 0.5)) < 2 * chunk_bytes
    assert _peak_bytes(lambda: add_scaled(out, x, 0.5)) < chunk_bytes
    assert _peak_bytes(lambda: add_scaled(out, x, 0.5, base=buf)) < chunk_bytes
