"""The compiled codec kernels (numba) against the NumPy code they replace: the same bits.

Every comparison runs one operation twice, kernels on and kernels off (``use_kernels``), and
wants the same encoded parts, residuals and decoded tables bit for bit, or the same error
with the same buffers left behind. Skipped where numba is not installed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from zps.codecs import Encoded, ErrorFeedback, decode, make_codec
from zps.codecs.kernels import compiled, kernels_available, use_kernels
from zps.codecs.sparse import SAMPLES, SMALL

pytest.importorskip("numba")

F32_MAX = float(np.finfo(np.float32).max)
BLOCKED = ("int8:8", "int8:16", "int8:24", "int8", "int8:1024", "sign:8", "sign:16",
           "sign:24", "sign", "sign:1024")
SPECS = (*BLOCKED, "topk:0.01", "topk:0.1", "topk:0.5", "topk:1")


@pytest.fixture(autouse=True)
def kernels_on() -> Iterator[None]:
    previous = use_kernels(True)
    yield
    use_kernels(previous)


def both(run: Callable[[], Any]) -> tuple[Any, Any]:
    """``run()`` with the kernels, then without: each a result, or the error raised."""
    out = []
    for on in (True, False):
        use_kernels(on)
        try:
            out.append(run())
        except ValueError as exc:
            out.append(exc)
    use_kernels(True)
    return out[0], out[1]


def same(a: Any, b: Any) -> None:
    """Equal bit for bit (arrays, encodings, tuples of them), or the same error."""
    if isinstance(a, Exception) or isinstance(b, Exception):
        assert type(a) is type(b) and str(a) == str(b), (a, b)
    elif isinstance(a, tuple | list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            same(x, y)
    elif isinstance(a, Encoded):
        assert (a.codec, a.shape, a.dtype, a.params) == (b.codec, b.shape, b.dtype, b.params)
        same(a.parts, b.parts)
    else:
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
        np.testing.assert_array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8))


def wide(dtype: type) -> st.SearchStrategy[float]:
    """Finite values of every size: zeros, subnormals, values near float32's limit (and,
    for float64, beyond it: int8 and sign refuse those)."""
    top = F32_MAX if dtype is np.float32 else 1e300
    return st.one_of(st.floats(-top, top, allow_nan=False, allow_infinity=False,
                               width=32 if dtype is np.float32 else 64),
                     st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.0**-140, F32_MAX, -F32_MAX]),
                     st.floats(-10, 10, width=32))


@st.composite
def tensors(draw: st.DrawFn, max_size: int = 700) -> np.ndarray:
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    size = draw(st.integers(0, max_size))
    if draw(st.booleans()):  # gradients, at one scale
        seed = draw(st.integers(0, 2**32 - 1))
        scale = 10.0 ** draw(st.integers(-30, 30))
        return (np.random.default_rng(seed).standard_normal(size) * scale).astype(dtype)
    return draw(arrays(dtype, size, elements=wide(dtype)))


def feedback_push(spec: str, r: np.ndarray, d: np.ndarray | None) -> Callable[[], Any]:
    """An ``encode_feedback`` of a copy of ``r`` (plus ``d``): the encoding and the buffer,
    or the error and the buffer."""
    def run() -> Any:
        buf = r.copy()
        try:
            encoded = make_codec(spec).encode_feedback(np, buf, d)  # type: ignore[attr-defined]
        except ValueError as exc:
            return exc, buf
        return encoded, buf
    return run


def test_kernels_compile_where_numba_imports() -> None:
    assert kernels_available()
    assert compiled(np, np.zeros(4, np.float32)) is not None
    assert compiled(np, np.zeros(4, np.float16)) is None
    assert compiled(np, np.zeros(8, np.float32)[::2]) is None
    assert compiled(np, np.zeros(4, np.float32), np.zeros(4, np.float64)) is None
    assert compiled(object(), np.zeros(4, np.float32)) is None  # type: ignore[arg-type]
    use_kernels(False)
    assert compiled(np, np.zeros(4, np.float32)) is None and not kernels_available()


def read_only(array: np.ndarray) -> np.ndarray:
    """``array`` as the wire delivers one: a read-only buffer."""
    return np.frombuffer(array.tobytes(), array.dtype).reshape(array.shape)


def test_nothing_compiles_after_the_first_use() -> None:
    # Every kernel is compiled (or loaded) once, for the signatures the codecs pass, so a
    # server never stalls compiling in its event loop: writable or read-only arrays alike.
    namespace = compiled(np, np.zeros(1, np.float32))
    counts = {name: len(f.signatures) for name, f in vars(namespace).items()}
    for dtype in (np.float32, np.float64):
        x = np.random.default_rng(0).standard_normal(5000).astype(dtype)
        for spec in SPECS:
            codec = make_codec(spec)
            for source in (x, read_only(x)):
                encoded = codec.encode(np, source)
                wire = Encoded(encoded.codec, encoded.shape, encoded.dtype,
                               tuple(read_only(p) for p in encoded.parts), encoded.params)
                for out_dtype in (np.float32, np.float64):
                    codec.decode_add(wire, np.zeros(x.shape, out_dtype), 0.5)
                    codec.decode_add(encoded, np.zeros(x.shape, out_dtype))
                codec.encode_feedback(np, x.copy(), source)  # type: ignore[attr-defined]
                codec.encode_feedback(np, source.copy())  # type: ignore[attr-defined]
        big = np.random.default_rng(1).standard_normal(2 * SMALL).astype(dtype)
        make_codec("topk:0.01").encode(np, read_only(big))
        make_codec("topk:0.01").encode_feedback(np, big.copy(), read_only(big))  # type: ignore[attr-defined]
    assert {name: len(f.signatures) for name, f in vars(namespace).items()} == counts


@settings(max_examples=300, deadline=None)
@given(tensors(), st.sampled_from(SPECS), st.integers(0, 2**32 - 1))
def test_encode_gives_the_same_bits(x: np.ndarray, spec: str, seed: int) -> None:
    same(*both(lambda: make_codec(spec, seed=seed).encode(np, x)))


@settings(max_examples=300, deadline=None)
@given(tensors(), st.sampled_from(SPECS), st.booleans(), st.data())
def test_encode_feedback_gives_the_same_bits_and_residual(
        r: np.ndarray, spec: str, add: bool, data: st.DataObject) -> None:
    d = data.draw(arrays(r.dtype, r.size, elements=wide(r.dtype.type))) if add else None
    same(*both(feedback_push(spec, r, d)))


@settings(max_examples=200, deadline=None)
@given(tensors(), st.sampled_from(SPECS), st.sampled_from([1.0, 0.5, -2.0, 1 / 3]),
       st.sampled_from([np.float32, np.float64]))
def test_decode_add_gives_the_same_bits(x: np.ndarray, spec: str, scale: float,
                                        out_dtype: type) -> None:
    codec = make_codec(spec, seed=1)
    try:
        encoded = codec.encode(np, x)
    except ValueError:
        return  # float64 beyond float32's range
    base = np.linspace(-3, 3, x.size).astype(out_dtype)

    def run() -> np.ndarray:
        out = base.copy()
        with np.errstate(over="ignore"):  # huge values times 2 (the NumPy code warns)
            codec.decode_add(encoded, out, scale)
        return out

    same(*both(run))


def tie_blocks(dtype: type, block: int, size: int, seed: int) -> np.ndarray:
    """Blocks that each sum to a float32 rounding tie (1 + 2**-24, times a power of two)
    plus a few pieces too small to count one at a time: the float32 mean depends on the
    order of the float64 additions, so any order but the kernels' shows."""
    rng = np.random.default_rng(seed)
    x = np.zeros(size, dtype)
    for start in range(0, size, block):
        part = x[start:start + block]
        at = rng.choice(part.size, min(part.size, rng.integers(3, 7)), replace=False)
        part[at] = rng.choice([2.0**-53, 2.0**-54], at.size)
        part[at[:2]] = np.array([1.0, 2.0**-24])[:at[:2].size]
    return x * rng.choice([-1, 1], size).astype(dtype) * dtype(2.0 ** rng.integers(-60, 60))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([np.float32, np.float64]), st.sampled_from([8, 16, 24, 256, 1024]),
       st.integers(1, 3000), st.integers(0, 2**32 - 1))
def test_sign_block_means_add_in_one_order(dtype: type, block: int, size: int,
                                           seed: int) -> None:
    x = tie_blocks(dtype, block, size, seed)
    same(*both(lambda: make_codec(f"sign:{block}").encode(np, x)))
    same(*both(feedback_push(f"sign:{block}", x, None)))


@pytest.mark.parametrize("block", [8, 256, 65536])
def test_sign_block_means_of_a_large_tensor_add_in_one_order(block: int) -> None:
    # Row groups of many blocks, more than one of them, and a short last block.
    x = tie_blocks(np.float32, block, (1 << 19) + 11, block)
    same(*both(lambda: make_codec(f"sign:{block}").encode(np, x)))


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["buffer", "delta", "both"])
def test_nan_and_inf_are_refused_the_same_way(spec: str, bad: float, where: str) -> None:
    r = np.linspace(-1, 1, 300, dtype=np.float32)
    d = np.linspace(2, -2, 300, dtype=np.float32)
    if where != "delta":
        r[77] = bad
    if where != "buffer":
        d[150] = bad
    with_kernels, without = both(feedback_push(spec, r, d))
    same(with_kernels, without)
    if where == "delta":  # refused before anything was added: the buffer is as it was
        assert isinstance(with_kernels[0], ValueError)
        same(with_kernels[1], r)
    plain = both(lambda: make_codec(spec).encode(np, r if where != "delta" else d))
    same(*plain)
    assert isinstance(plain[0], ValueError) and "NaN or inf" in str(plain[0])


@pytest.mark.parametrize("spec", ["int8", "sign:8", "topk:0.1"])
def test_float64_beyond_float32_gives_the_same_outcome(spec: str) -> None:
    r = np.linspace(-1, 1, 64)
    d = np.zeros(64)
    d[5] = 1e300
    same(*both(feedback_push(spec, r, d)))
    same(*both(feedback_push(spec, r + d, None)))
    same(*both(lambda: make_codec(spec).encode(np, r + d)))


@pytest.mark.parametrize("spec", SPECS)
def test_sums_beyond_the_float_range_saturate_the_same_way(spec: str) -> None:
    r = np.full(100, 3e38, np.float32)
    d = np.full(100, 3e38, np.float32)
    d[::2] *= -1
    with_kernels, without = both(feedback_push(spec, r, d))
    same(with_kernels, without)
    assert np.isfinite(with_kernels[1]).all()


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(SPECS), st.integers(0, 2000), st.integers(0, 2**32 - 1),
       st.sampled_from([np.float32, np.float64]))
def test_error_feedback_push_after_push_is_the_same(spec: str, size: int, seed: int,
                                                    dtype: type) -> None:
    def run() -> list[Any]:
        rng = np.random.default_rng(seed)
        feedback = ErrorFeedback(make_codec(spec, seed=seed), np)
        out: list[Any] = []
        for _ in range(4):
            delta = (rng.standard_normal(size) * 10.0 ** rng.integers(-3, 4)).astype(dtype)
            out += [feedback.encode("w", delta), feedback.residuals["w"].copy()]
        return out

    same(*both(run))


@settings(max_examples=100, deadline=None)
@given(tensors(), st.sampled_from(SPECS))
def test_decoded_plus_residual_is_what_was_pushed(r: np.ndarray, spec: str) -> None:
    rng = np.random.default_rng(r.size)
    d = rng.standard_normal(r.size).astype(r.dtype)
    r = np.clip(r, -1e30, 1e30)  # the sum stays clear of the float range
    codec = make_codec(spec)
    buf = r.copy()
    try:
        encoded = codec.encode_feedback(np, buf, d)  # type: ignore[attr-defined]
    except ValueError:
        return
    total = r.astype(np.float64) + d
    got = decode(codec, encoded).astype(np.float64) + buf
    np.testing.assert_allclose(got, total, rtol=1e-6,
                               atol=1e-6 * float(np.abs(total).max(initial=0)))


# ---------------------------------------------------------------- topk beyond SMALL

def _sampled(size: int) -> np.ndarray:
    """The positions ``numba_topk.sample_keys`` reads for a tensor of ``size`` values."""
    from zps.codecs.numba_topk import SPREAD

    j = np.arange(SAMPLES, dtype=np.int64)
    step = size // SAMPLES
    return j * step + (j * SPREAD) % step


def _large(kind: str, size: int, dtype: type) -> np.ndarray:
    rng = np.random.default_rng(size)
    x = rng.standard_normal(size).astype(dtype)
    if kind == "ties":  # few distinct magnitudes: the cut falls among many equal values
        return np.round(x * 2).astype(dtype)
    if kind == "sparse":  # mostly zeros, fewer non-zeros than k: zeros fill up the rest
        x[rng.random(size) > 0.003] = 0
    elif kind == "missed high":  # the sample sees large values that nothing else reaches
        x *= 1e-3
        x[_sampled(size)] = np.linspace(1, 2, SAMPLES)
    elif kind == "missed low":  # the sample sees zeros; more than the buffer holds pass
        x[_sampled(size)] = 0
    return x


@pytest.mark.parametrize("kind", ["gradient", "ties", "sparse", "missed high", "missed low"])
@pytest.mark.parametrize("ratio", [0.001, 0.01, 0.3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_topk_of_large_tensors_is_the_same(kind: str, ratio: float, dtype: type) -> None:
    size = 2 * SMALL + 13
    x = _large(kind, size, dtype)
    d = np.random.default_rng(1).standard_normal(size).astype(dtype) * dtype(1e-4)
    spec = f"topk:{ratio}"
    with_kernels, without = both(lambda: make_codec(spec).encode(np, x))
    same(with_kernels, without)
    assert with_kernels.parts[0].size == make_codec(spec).k_for(size)  # type: ignore[attr-defined]
    same(*both(feedback_push(spec, x, d)))
    same(*both(feedback_push(spec, x, None)))


def test_decode_add_with_parts_a_kernel_cannot_take_runs_the_numpy_code() -> None:
    codec = make_codec("int8:8")
    good = codec.encode(np, np.linspace(-1, 1, 40, dtype=np.float32))
    strided = Encoded("int8", (40,), "float32", (good.parts[0], np.repeat(good.parts[1], 2)[::2]),
                      good.params)
    short = Encoded("int8", (40,), "float32", (good.parts[0], good.parts[1][:-1]), good.params)

    def run(encoded: Encoded) -> Callable[[], np.ndarray]:
        def go() -> np.ndarray:
            out = np.zeros(40, np.float32)
            codec.decode_add(encoded, out)
            return out
        return go

    same(*both(run(strided)))
    same(run(strided)(), run(good)())
    with pytest.raises(ValueError):
        run(short)()
