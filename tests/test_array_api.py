"""The device path on the CPU, under ``array_api_strict``: a NumPy-only call in the client,
the codecs, error feedback or the built-in models fails here, as it would on a GPU."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import zps
from zps.codecs import ErrorFeedback, make_codec
from zps.jobs.models import MODELS
from zps.jobs.runner import JobContext, train_digits

xp = pytest.importorskip("array_api_strict")

CODECS = ["none", "fp16", "int8", "int8:64", "sign", "topk:0.05"]


def strict(array: np.ndarray) -> Any:
    return xp.asarray(array)


def host(array: Any) -> np.ndarray:
    return np.asarray(np.from_dlpack(array))


@pytest.mark.parametrize("spec", CODECS)
def test_codecs_on_a_strict_namespace_decode_like_numpy(spec: str) -> None:
    codec = make_codec(spec)
    rng = np.random.default_rng(1)
    device, numpy = ErrorFeedback(codec, xp), ErrorFeedback(codec, np)
    for _ in range(3):
        values = rng.standard_normal((40, 25)).astype(np.float32)
        a, b = device.encode("t", strict(values)), numpy.encode("t", values)
        assert (a.codec, a.shape, a.dtype) == (b.codec, b.shape, b.dtype)
        out_a, out_b = np.zeros_like(values), np.zeros_like(values)
        codec.decode_add(type(a)(a.codec, a.shape, a.dtype, tuple(host(p) for p in a.parts),
                                 a.params), out_a)
        codec.decode_add(b, out_b)
        np.testing.assert_allclose(out_a, out_b, rtol=1e-6, atol=1e-6)
    if not codec.lossless:
        assert type(device.residuals["t"]).__module__.startswith("array_api_strict")


@pytest.mark.parametrize("spec", CODECS)
def test_strict_arrays_through_the_client(start_server: Any, spec: str) -> None:
    server = start_server(mode="async")
    with zps.Client([server.address], codec=spec) as ps:
        ps.init({"w": strict(np.zeros((30, 4), np.float32)), "b": np.zeros(4)})
        got = ps.push_pull({"w": xp.ones((30, 4), dtype=xp.float32),
                            "b": xp.ones(4, dtype=xp.float64)})
        assert all(type(v).__module__.startswith("array_api_strict") for v in got.values())
        on_host = ps.pull()
        np.testing.assert_allclose(host(got["w"]), on_host["w"])
        assert isinstance(on_host["w"], np.ndarray)
        target = xp.zeros((30, 4), dtype=xp.float32)
        assert ps.pull(["w"], out={"w": target})["w"] is target
        np.testing.assert_allclose(host(target), on_host["w"])
        assert type(ps.pull(device=xp)["b"]).__module__.startswith("array_api_strict")
        if spec == "none":
            np.testing.assert_array_equal(on_host["w"], 1.0)


def test_strict_row_calls(start_server: Any) -> None:
    server = start_server(mode="async")
    with zps.Client([server.address]) as ps:
        ps.init_rows("emb", dim=4, init="zeros")
        ids = xp.asarray([3, 7, 3], dtype=xp.int64)
        rows = ps.push_pull_rows("emb", ids, xp.ones((3, 4), dtype=xp.float32))
        assert type(rows).__module__.startswith("array_api_strict")
        np.testing.assert_array_equal(host(rows), [[2.0] * 4, [1.0] * 4, [2.0] * 4])
        np.testing.assert_array_equal(host(ps.pull_rows("emb", ids)), host(rows))


def test_a_mix_of_devices_in_one_call_is_refused(start_server: Any) -> None:
    server = start_server(mode="async")
    with zps.Client([server.address]) as ps:
        ps.init({"a": np.zeros(2), "b": np.zeros(2)})
        with pytest.raises(zps.ConfigError, match="one device"):
            ps.push({"a": xp.ones(2, dtype=xp.float64), "b": _Foreign()})
        ps.push({"a": np.ones(2), "b": np.ones(2)})  # nothing was sent before
        np.testing.assert_array_equal(ps.pull()["a"], 1.0)


class _Foreign:
    """An array of a namespace of its own."""

    shape = (2,)
    dtype = "float64"

    def __array_namespace__(self) -> Any:
        import array_api_compat.numpy

        return array_api_compat.numpy


@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_are_the_same_on_a_strict_namespace(name: str) -> None:
    model = MODELS[name]
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 64)).astype(np.float32), rng.integers(0, 10, 16)
    params = model.init(64, 10, 0)
    loss, grads = model.loss_grad(np, params, x, y)
    strict_loss, strict_grads = model.loss_grad(xp, {k: strict(v) for k, v in params.items()},
                                                strict(x), strict(y))
    assert loss == strict_loss
    for key, grad in grads.items():
        np.testing.assert_array_equal(host(strict_grads[key]), grad)


def test_the_digits_job_trains_on_a_strict_namespace(start_server: Any) -> None:
    server = start_server(mode="async")
    with zps.Client([server.address], codec="int8") as ps:
        result = train_digits(ps, JobContext(epochs=3, progress=False), MODELS["mlp"], xp=xp)
    assert result["device"] == "array_api_strict"
    assert result["test_accuracy"] > 0.8


def test_a_device_out_of_the_wrong_shape_is_refused_before_anything_is_sent(
        start_server: Any) -> None:
    server = start_server(mode="async")
    with zps.Client([server.address]) as ps:
        ps.init({"w": np.zeros(4, np.float32)})
        with pytest.raises(zps.ShapeMismatchError, match="out"):
            ps.push_pull({"w": xp.ones(4, dtype=xp.float32)},
                         out={"w": xp.zeros(5, dtype=xp.float32)})
        np.testing.assert_array_equal(ps.pull()["w"], 0)  # nothing was applied


def test_a_row_split_matrix_from_a_device_and_set_codec_after(start_server: Any) -> None:
    server = start_server(mode="async")
    with zps.Client([server.address], chunk_bytes=256, codec="int8") as ps:
        ps.init({"m": np.zeros((40, 8), np.float32)})  # 1280 bytes: five row parts
        ps.push({"m": xp.ones((40, 8), dtype=xp.float32)})
        ps.set_codec(["m"], "none")
        ps.push({"m": xp.ones((40, 8), dtype=xp.float32)})
        got = ps.pull()["m"]
    np.testing.assert_allclose(got, 2.0, atol=0.02)
