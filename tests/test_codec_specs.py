"""Codec specs, header params and buffers from the wire: one set of rules, and nothing but
``CodecError`` for anything they refuse (sans-IO)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zps.codecs import (
    CODECS,
    CodecError,
    Encoded,
    Int8Codec,
    SignCodec,
    TopKCodec,
    check_parts,
    codec_for,
    decode,
    make_codec,
    parse_codec_spec,
)
from zps.codecs.spec import block_param, check_block, k_param
from zps.errors import ProtocolError

CANONICAL = {
    "none": "none", "fp16": "fp16",
    "int8": "int8:256", "int8:8": "int8:8", "int8:65536": "int8:65536", "int8:0064": "int8:64",
    "sign": "sign:256", "sign:1024": "sign:1024",
    "topk": "topk:0.01", "topk:1": "topk:1.0", "topk:.5": "topk:0.5", "topk:1e-3": "topk:0.001",
    "topk:0.25": "topk:0.25",
}

REFUSED = [
    "int8:0", "int8:-8", "int8:12", "sign:4", "sign:0", "int8:16777216", "int8:65544",
    "topk:0", "topk:nan", "topk:inf", "topk:2", "topk:-0.5", "topk:1e-400", "int8:", "topk:",
    "int8:abc", "fp16:3", "none:1", " int8", "int8 ", "int8\n", "int8:256:1", "int8:+16",
    "int8:1_6", "int8:\u0661\u0666", "INT8", "zip", "", ":", "topk:0x1p-3", "int8:256.0",
    "x" * 1000, 256, None, b"int8", ["int8"],
]


@pytest.mark.parametrize(("text", "canonical"), CANONICAL.items())
def test_specs_have_one_canonical_form(text: str, canonical: str) -> None:
    assert parse_codec_spec(text) == canonical
    assert parse_codec_spec(canonical) == canonical


@pytest.mark.parametrize("text", REFUSED)
def test_everything_else_is_refused_with_the_accepted_forms(text: Any) -> None:
    with pytest.raises(CodecError, match=r"use none, fp16, int8\[:BLOCK\]") as caught:
        parse_codec_spec(text)
    assert caught.value.code == "bad_header"
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, ProtocolError)
    assert len(str(caught.value)) < 300  # a hostile spec is not echoed in full
    with pytest.raises(CodecError):
        make_codec(text)
    with pytest.raises(CodecError):
        codec_for(text)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=20),
                 st.from_regex(r"(int8|sign|topk|none|fp16)(:[-+.0-9eE]{0,8})?", fullmatch=True)))
def test_any_text_parses_to_a_fixed_point_or_is_refused(text: str) -> None:
    try:
        canonical = parse_codec_spec(text)
    except CodecError as exc:
        assert exc.code == "bad_header"
        return
    assert parse_codec_spec(canonical) == canonical
    assert make_codec(text).name == canonical.partition(":")[0]


@settings(max_examples=300, deadline=None)
@given(st.integers(-100, 70000))
def test_spec_and_header_blocks_follow_one_rule(block: int) -> None:
    valid = block % 8 == 0 and 8 <= block <= 65536
    for check in (lambda: parse_codec_spec(f"int8:{block}"),
                  lambda: parse_codec_spec(f"sign:{block}"),
                  lambda: check_block(block), lambda: block_param({"block": block}),
                  lambda: Int8Codec(block), lambda: SignCodec(block)):
        if valid:
            check()
        else:
            with pytest.raises(CodecError):
                check()


@pytest.mark.parametrize("block", [True, 256.0, "256", None, [256], 1 << 70])
def test_header_blocks_must_be_ints(block: Any) -> None:
    with pytest.raises(CodecError, match="block must be") as caught:
        block_param({"block": block})
    assert caught.value.code == "bad_header"


def test_header_params_must_be_a_map_and_block_defaults() -> None:
    assert block_param({}) == 256
    with pytest.raises(CodecError, match="params must be a map"):
        block_param([("block", 8)])
    assert k_param({"k": 3}, 3) == 3
    for k in (-1, 4, True, 1.0, None):
        with pytest.raises(CodecError, match="k must be"):
            k_param({"k": k}, 3)


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_topk_ratios_follow_one_rule(ratio: float) -> None:
    valid = math.isfinite(ratio) and 0 < ratio <= 1
    for check in (lambda: parse_codec_spec(f"topk:{ratio!r}"), lambda: TopKCodec(ratio)):
        if valid:
            check()
        else:
            with pytest.raises(CodecError):
                check()


def test_codec_for_shares_codecs_by_canonical_spec() -> None:
    assert codec_for("int8") is codec_for("int8:256")
    assert codec_for("topk:.5") is codec_for("topk:0.5")
    assert codec_for("int8") is not make_codec("int8")
    assert codec_for("int8:8")._rng is None  # type: ignore[attr-defined]  # lazily made


def test_codec_for_keeps_the_32_most_recently_used() -> None:
    kept = codec_for("sign:8")
    for block in range(16, 16 + 8 * 31, 8):
        codec_for(f"int8:{block}")
        assert codec_for("sign:8") is kept  # used again: most recent
    for block in range(16, 16 + 8 * 31, 8):
        codec_for(f"sign:{block}")
    assert codec_for("sign:8") is kept  # 31 others since: still there
    for block in range(264, 264 + 8 * 32, 8):
        codec_for(f"int8:{block}")
    assert codec_for("sign:8") is not kept  # 32 others since: built again


def test_int8_makes_its_generator_on_first_encode() -> None:
    codec = Int8Codec(seed=3)
    assert codec._rng is None
    codec.encode(np, np.ones(10, np.float32))
    assert codec._rng is not None


# ---------------------------------------------------------------- buffers from the wire

def _good(spec: str, x: np.ndarray) -> tuple[Any, Encoded]:
    codec = make_codec(spec)
    return codec, codec.encode(np, x)


def _with(encoded: Encoded, **changes: Any) -> Encoded:
    fields = {"codec": encoded.codec, "shape": encoded.shape, "dtype": encoded.dtype,
              "parts": encoded.parts, "params": encoded.params, **changes}
    return Encoded(**fields)


def _refused(codec: Any, encoded: Encoded, code: str, match: str) -> None:
    with pytest.raises(CodecError, match=match) as caught:
        check_parts(codec, encoded)
    assert caught.value.code == code


def test_wrong_buffers_are_refused_as_bad_frames() -> None:
    codec, good = _good("int8", np.ones(300, np.float32))
    q, scales = good.parts
    _refused(codec, _with(good, parts=(q,)), "bad_frames", "needs 2 buffers")
    _refused(codec, _with(good, parts=(q, scales, scales)), "bad_frames", "needs 2 buffers")
    _refused(codec, _with(good, parts=(q[:-1], scales)), "bad_frames", "buffer 0")
    _refused(codec, _with(good, parts=(q, scales.astype(np.float64))), "bad_frames", "buffer 1")
    _refused(codec, _with(good, parts=(q.reshape(3, 100), scales)), "bad_frames", "buffer 0")
    _refused(codec, _with(good, parts=(q.tolist(), scales)), "bad_frames", "got list")
    _refused(codec, _with(good, parts=None), "bad_frames", "got NoneType")
    bad = scales.copy()
    bad[1] = np.nan
    _refused(codec, _with(good, parts=(q, bad)), "bad_frames", "NaN or inf")
    fp16, half = _good("fp16", np.ones(4, np.float32))
    inf = half.parts[0].copy()
    inf[2] = np.inf
    _refused(fp16, _with(half, parts=(inf,)), "bad_frames", "NaN or inf")


def test_wrong_headers_are_refused_as_bad_header() -> None:
    codec, good = _good("sign", np.ones(300, np.float32))
    _refused(codec, _with(good, params={"block": 12}), "bad_header", "block must be")
    _refused(codec, _with(good, params=None), "bad_header", "params must be a map")
    _refused(codec, _with(good, shape=(-1,)), "bad_header", "shape")
    _refused(codec, _with(good, shape=[300]), "bad_header", "shape")
    _refused(codec, _with(good, shape=("300",)), "bad_header", "shape")
    _refused(codec, _with(good, dtype="int8"), "bad_header", "dtype")
    _refused(codec, _with(good, dtype={"names": ["a"], "formats": ["f4"]}), "bad_header", "dtype")


@pytest.mark.parametrize(("indices", "match"), [
    ([0, 5], "out of range"), ([-1, 2], "out of range"), ([3, 1], "sorted"), ([2, 2], "sorted"),
])
def test_topk_indices_must_be_in_range_sorted_and_distinct(indices: list[int],
                                                           match: str) -> None:
    codec, good = _good("topk:0.4", np.arange(5, dtype=np.float32))
    idx = np.array(indices, np.int32)
    _refused(codec, _with(good, parts=(idx, good.parts[1])), "bad_frames", match)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` three times in four (a flat ``one_of`` would weigh each branch alike)."""
    return st.sampled_from([good, good, good, bad]).flatmap(lambda chosen: chosen)


PART_DTYPES = ["int8", "uint8", "int32", "float16", "float32", "float64", "int64", "bool"]
hostile_values = st.one_of(st.integers(-(1 << 70), 1 << 70), st.none(), st.booleans(),
                           st.floats(), st.text(max_size=5), st.lists(st.integers(), max_size=2))
# Mostly small and well-typed, so that many examples get past the header to the buffers.
random_arrays = st.builds(
    lambda dtype, n, seed: np.random.default_rng(seed).integers(
        0, 256, n * np.dtype(dtype).itemsize, dtype=np.uint8).view(dtype),
    st.sampled_from(PART_DTYPES), st.integers(0, 10), st.integers(0, 1000))
hostile_parts = st.one_of(
    st.lists(random_arrays, max_size=3).map(tuple),
    st.lists(st.one_of(random_arrays, st.none(), st.integers(), st.text(max_size=3)),
             max_size=3).map(tuple),
    hostile_values)
hostile_params = mostly(
    st.fixed_dictionaries({}, optional={"block": st.one_of(st.sampled_from([8, 16, 12, 0]),
                                                          hostile_values),
                                        "k": st.one_of(st.integers(-1, 10), hostile_values)}),
    st.one_of(st.dictionaries(st.text(max_size=3), hostile_values, max_size=2), hostile_values))

hostile_shapes = mostly(st.lists(st.integers(0, 3), max_size=2).map(tuple), st.one_of(
    st.lists(st.integers(-2, 1 << 40), max_size=3).map(tuple),
    st.lists(hostile_values, max_size=2).map(tuple), hostile_values))
hostile_dtypes = mostly(st.sampled_from(["float32", "float64"]), st.one_of(
    st.sampled_from(["float16", "int8", "f4", "", "V8", "(2,)f4"]), hostile_values))


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from(CODECS), hostile_shapes, hostile_dtypes, hostile_parts, hostile_params)
def test_hostile_input_raises_codec_error_and_nothing_else(
        name: str, shape: Any, dtype: Any, parts: Any, params: Any) -> None:
    codec = make_codec(name)
    encoded = Encoded(name, shape, dtype, parts, params)
    try:
        check_parts(codec, encoded)
    except CodecError:
        return
    with np.errstate(all="ignore"):  # accepted garbage may overflow: that is the table's
        decode(codec, encoded)       # business, not a crash


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["int8:8", "sign:8", "fp16", "none", "topk:0.5"]),
       st.integers(0, 40), st.integers(0, 2**32 - 1))
def test_right_sized_random_buffers_decode_or_are_refused(spec: str, size: int,
                                                         seed: int) -> None:
    # Each part the right dtype and length, but random bytes (NaN, unsorted indices...).
    codec, good = _good(spec, np.ones(size, np.float32))
    rng = np.random.default_rng(seed)
    parts = tuple(rng.integers(0, 256, p.nbytes, dtype=np.uint8).view(p.dtype)
                  for p in good.parts)
    encoded = _with(good, parts=parts)
    try:
        check_parts(codec, encoded)
    except CodecError as exc:
        assert exc.code == "bad_frames"
        return
    with np.errstate(all="ignore"):
        assert decode(codec, encoded).shape == (size,)
