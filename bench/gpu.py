"""GPU checks in one go: the CuPy tests, then what the device buys, on a machine with a GPU.

1. ``pytest -m gpu`` (tests/test_gpu.py: device arrays through the client, codecs and
   error feedback on the device against NumPy, CUDA torch tensors through DLPack);
2. int8 encode with error feedback of a 64 MiB float32 tensor, CuPy against NumPy on the
   same machine (GB/s of dense input; target >= 10x);
3. push_pull of a 16 MiB float32 tensor from device arrays by 4 worker processes against
   one server in sync mode: int8 against uncompressed (rounds/s; target: int8 faster);
4. the digits MLP job with ``--device cuda`` against ``--device cpu`` (test accuracy of 4
   sync workers; target: the same accuracy).

Prints a table, writes JSON (``--out``). Without a usable CUDA device it says so and
exits 0 after nothing: CI has no GPU.

    python bench/gpu.py                 # a few minutes
    python bench/gpu.py --skip-tests    # the figures only
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zps
from zps.cli.cluster import LocalCluster
from zps.codecs import ErrorFeedback, make_codec
from zps.devices import cuda_available

ROOT = Path(__file__).resolve().parent.parent
ENCODE_BYTES = 64 << 20
PUSH_BYTES = 16 << 20


def encode_rate(xp: Any, seconds: float = 2.0) -> float:
    """GB/s of dense float32 input through int8 encode with error feedback on ``xp``."""
    codec = make_codec("int8")
    feedback = ErrorFeedback(codec, xp)
    delta = xp.asarray(np.random.default_rng(0).standard_normal(ENCODE_BYTES // 4,
                                                                dtype=np.float32))
    feedback.encode("t", delta)  # the residual, compiled kernels, the memory pool
    sync = getattr(getattr(xp, "cuda", None), "Device", None)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        encoded = feedback.encode("t", delta)
        runs += 1
    if sync is not None:
        xp.cuda.Device().synchronize()
    del encoded
    return runs * ENCODE_BYTES / (time.perf_counter() - start) / 1e9


def _push_pull_worker(address: str, codec: str, seconds: float, rank: int, out: Any) -> None:
    import cupy

    with zps.Client([address], codec=codec, rank=rank) as ps:
        value = cupy.zeros(PUSH_BYTES // 4, cupy.float32)
        ps.init({"t": np.zeros(PUSH_BYTES // 4, np.float32)})
        delta = cupy.full(PUSH_BYTES // 4, 1e-3, cupy.float32)
        rounds, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            value = ps.push_pull({"t": delta})["t"]
            rounds += 1
        out.put((rounds / (time.perf_counter() - start), type(value).__module__))


def push_pull_rate(codec: str, workers: int, seconds: float, folder: Path) -> float:
    """Rounds/s of a ``workers``-worker sync push_pull of device arrays with ``codec``."""
    context = mp.get_context("spawn")
    results = context.Queue()
    with LocalCluster(folder / codec) as cluster:
        cluster.start_servers(1, ["--mode", "sync", "--workers", str(workers)])
        procs = [context.Process(target=_push_pull_worker,
                                 args=(cluster.addresses[0], codec, seconds, i, results))
                 for i in range(workers)]
        for proc in procs:
            proc.start()
        rates = [results.get(timeout=seconds + 120) for _ in procs]
        for proc in procs:
            proc.join()
    assert all(module.startswith("cupy") for _, module in rates), rates
    return min(rate for rate, _ in rates)


def digits_accuracy(device: str, folder: Path) -> float:
    """Mean test accuracy of 4 sync workers of digits-mlp on ``device``."""
    with LocalCluster(folder / device) as cluster:
        cluster.start_servers(1, ["--mode", "sync", "--workers", "4"])
        for index in range(4):
            cluster.start_worker(["--device", device, "--quiet", "--epochs", "30",
                                  "--metrics-out", str(folder / f"{device}{index}.json")])
        codes = cluster.wait_workers(timeout=600)
    assert codes == [0] * 4, codes
    found = [json.loads((folder / f"{device}{i}.json").read_text()) for i in range(4)]
    assert all(r["device"] == ("cupy" if device == "cuda" else "numpy") for r in found)
    return float(np.mean([r["test_accuracy"] for r in found]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-tests", action="store_true", help="only the figures")
    parser.add_argument("--seconds", type=float, default=5.0, help="per push_pull cell")
    parser.add_argument("--out", default="bench/results/gpu.json")
    args = parser.parse_args()
    if not cuda_available():
        print("no usable CUDA device (CuPy missing or no GPU): nothing to measure here")
        return 0
    import cupy

    results: dict[str, Any] = {"gpu": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(),
                               "host": platform.processor() or platform.machine()}
    if not args.skip_tests:
        tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu",
                                "tests/test_gpu.py"], cwd=ROOT, check=False)
        results["tests_passed"] = tests.returncode == 0
    folder = ROOT / "out" / "bench-gpu"
    folder.mkdir(parents=True, exist_ok=True)
    results["encode_gbs"] = {"numpy": encode_rate(np), "cupy": encode_rate(cupy)}
    results["push_pull_rounds_s"] = {codec: push_pull_rate(codec, 4, args.seconds, folder)
                                     for codec in ("none", "int8")}
    results["digits_accuracy"] = {device: digits_accuracy(device, folder)
                                  for device in ("cpu", "cuda")}
    encode, rounds, acc = (results["encode_gbs"], results["push_pull_rounds_s"],
                           results["digits_accuracy"])
    rows = [
        ("int8+EF encode 64 MiB, GB/s", f"{encode['numpy']:.2f}", f"{encode['cupy']:.2f}",
         f"{encode['cupy'] / encode['numpy']:.1f}x (target >= 10x)"),
        ("4-worker push_pull 16 MiB, rounds/s (none / int8)", f"{rounds['none']:.1f}",
         f"{rounds['int8']:.1f}", f"int8 {rounds['int8'] / rounds['none']:.2f}x of none"),
        ("digits-mlp 4 workers, test accuracy (cpu / cuda)", f"{acc['cpu']:.4f}",
         f"{acc['cuda']:.4f}", f"{acc['cuda'] - acc['cpu']:+.4f}"),
    ]
    print(f"\nGPU: {results['gpu']}")
    for name, a, b, note in rows:
        print(f"{name:52} {a:>10} {b:>10}  {note}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")
    return 0 if results.get("tests_passed", True) else 1


if __name__ == "__main__":
    sys.exit(main())
