"""CuPy on a real GPU: device arrays through the client, codecs and error feedback on the
device, CUDA torch tensors through DLPack. Skipped without a CUDA device (CI has none);
``bench/gpu.py`` runs these where there is one."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import zps
from zps.codecs import ErrorFeedback, make_codec
from zps.devices import cuda_available

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not cuda_available(), reason="no CUDA device (CuPy)")]


@pytest.fixture
def cupy() -> Any:
    import cupy

    return cupy


@pytest.mark.parametrize("codec", ["none", "fp16", "int8", "sign", "topk:0.1"])
def test_device_arrays_push_and_come_back_on_the_device(start_server: Any, cupy: Any,
                                                        codec: str) -> None:
    server = start_server(mode="async")
    with zps.Client([server.address], codec=codec) as ps:
        ps.init({"w": np.zeros((64, 32), np.float32)})
        delta = cupy.full((64, 32), 0.5, cupy.float32)
        got = ps.push_pull({"w": delta})["w"]
        assert isinstance(got, cupy.ndarray) and got.device == delta.device
        host = ps.pull()["w"]
        assert isinstance(host, np.ndarray)
        np.testing.assert_allclose(cupy.asnumpy(got), host)
        target = cupy.empty((64, 32), cupy.float32)
        assert ps.pull(out={"w": target})["w"] is target
        np.testing.assert_allclose(cupy.asnumpy(target), host)
        assert isinstance(ps.pull(device="cuda")["w"], cupy.ndarray)


@pytest.mark.parametrize("spec", ["fp16", "int8", "sign", "topk:0.1"])
def test_device_codecs_decode_like_numpy(cupy: Any, spec: str) -> None:
    codec = make_codec(spec)
    values = np.random.default_rng(3).standard_normal(10_000).astype(np.float32)
    on_gpu, on_cpu = ErrorFeedback(codec, cupy), ErrorFeedback(codec, np)
    for _ in range(3):
        gpu, cpu = on_gpu.encode("t", cupy.asarray(values)), on_cpu.encode("t", values)
        assert all(isinstance(p, cupy.ndarray) for p in gpu.parts)  # encoded on the device
        decoded_gpu, decoded_cpu = np.zeros(values.size, np.float32), np.zeros_like(values)
        codec.decode_add(type(gpu)(gpu.codec, gpu.shape, gpu.dtype,
                                   tuple(cupy.asnumpy(p) for p in gpu.parts), gpu.params),
                         decoded_gpu)
        codec.decode_add(cpu, decoded_cpu)
        np.testing.assert_allclose(decoded_gpu, decoded_cpu, rtol=1e-5, atol=1e-6)
    assert isinstance(on_gpu.residuals["t"], cupy.ndarray)  # the residual stays there


def test_cuda_torch_tensors_pass_through_dlpack(start_server: Any, cupy: Any) -> None:
    torch = pytest.importorskip("torch")
    server = start_server(mode="async")
    with zps.Client([server.address], codec="int8") as ps:
        ps.init({"w": np.zeros(256, np.float32)})
        delta = torch.ones(256, device="cuda")
        got = ps.push_pull({"w": delta})["w"]
        assert isinstance(got, cupy.ndarray)
        np.testing.assert_allclose(cupy.asnumpy(got), 1.0, atol=0.02)


def test_encoded_parts_reach_the_host_through_pinned_memory(cupy: Any) -> None:
    from zps.devices import HostCopies

    copies = HostCopies(cupy)
    parts = [cupy.arange(n, dtype=cupy.float32) for n in (10, 100_000)]
    hosts = [copies.add(p) for p in parts]
    copies.wait()
    for part, host in zip(parts, hosts, strict=True):
        assert isinstance(host, np.ndarray)
        np.testing.assert_array_equal(host, cupy.asnumpy(part))
