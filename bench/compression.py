"""What each codec buys: bytes on the wire, push_pull throughput, codec cost, accuracy.

For each codec of ``--codecs`` (default none, fp16, int8, sign, topk:0.01):

1. wire: bytes of one push of a 16 MiB float32 tensor (the encoded size) and of one pull
   (a delta pull with the same codec, from the server's ``bytes_out``; one worker, sync
   mode), with their compression ratios; ``none`` pulls whole tables. Pull sizes do not
   depend on the values: with one worker the server replays the worker's own compressed
   push, with several it encodes the round's mean once, to the same size;
2. throughput: push_pull rounds per second and effective dense GB/s for each tensor size
   and worker count, worker *processes* against one ``zps-server`` in sync mode, pushes
   compressed with the codec and delta pulls with the same codec (``none``: plain pushes
   and whole-table pulls). ``none`` is always measured, and each row shows its speedup
   over ``none`` in the same cell;
3. cost: encode (worker side, with and without error feedback) and ``decode_add`` (server
   side) in milliseconds per tensor, measured in this process;
4. kernels: GB/s on one core (dense bytes over time) of encode, encode with error feedback
   (a steady-state push: residual plus delta in) and ``decode_add`` of a 64 MiB float32
   tensor, with the compiled kernels and with the NumPy code they replace
   (``zps.codecs.kernels.use_kernels``), for each lossy codec but fp16; the machine's load
   average is printed beside them, as other processes share its cores;
5. accuracy: the digits MLP's final test accuracy with 4 workers in sync mode (mean over
   the workers, then over ``--seeds``) for each codec with error feedback and, for lossy
   codecs, without; each with delta pulls in the same codec and with exact whole-table
   pulls (``--train-pulls``: a lossy pull codec has no error feedback of its own, so the two
   are told apart); and the bytes the workers pushed (server ``bytes_in``, all tables).

Prints a table per part and the issue's targets (met or not, from the measured figures),
writes JSON and a PNG of accuracy against bytes pushed.

    python bench/compression.py            # everything (6 minutes on 2 cores)
    python bench/compression.py --quick    # a smoke run (under 2 minutes)
    python bench/compression.py --parts kernels   # the kernel table alone (a minute)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import queue
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zps
from zps.cli.cluster import LocalCluster
from zps.codecs import ErrorFeedback, make_codec
from zps.codecs.kernels import kernels_available, use_kernels
from zps.config import ClientConfig

CODECS = "none,fp16,int8,sign,topk:0.01"
SIZES = {"16MiB": 16 << 20, "64MiB": 64 << 20}
WIRE_SIZE = "16MiB"
KERNEL_SIZE = "64MiB"
PARTS = ("wire", "throughput", "cost", "kernels", "accuracy")
NO_TARGET = 1 << 30  # the round count a throughput cell runs to until its time is up


def gradient(size: int, seed: int) -> np.ndarray:
    """A float32 update of ``size`` bytes that looks like a scaled gradient."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal(size // 4, dtype=np.float32) * np.float32(1e-3)


def pull_codec_for(spec: str) -> str | None:
    """Delta pulls with the push codec; ``none`` pulls whole tables."""
    return None if spec == "none" else spec


def table_traffic(stats: list[dict[str, Any]], table: str) -> tuple[int, int]:
    """(bytes_in, bytes_out) of ``table``'s parts, summed over the servers."""
    entries = [t for s in stats for t in s["tables"]
               if t["name"] == table or t["name"].startswith(f"{table}[")]
    return sum(t["bytes_in"] for t in entries), sum(t["bytes_out"] for t in entries)


def server_args(workers: int) -> list[str]:
    return ["--mode", "sync", "--workers", str(workers), "--log-level", "warning"]


# ---------------------------------------------------------------- 1. bytes on the wire


def wire_row(address: str, spec: str, index: int, pulls: int) -> dict[str, Any]:
    """One client pushes and pulls a 16 MiB tensor ``pulls`` times with codec ``spec``;
    the encoded push size, and the server's bytes in and out for each round."""
    size = SIZES[WIRE_SIZE]
    value = gradient(size, index)
    name = f"wire{index}"
    with zps.Client([address], codec=spec, pull_codec=pull_codec_for(spec),
                    heartbeat_interval=0) as ps:
        ps.init({name: np.zeros_like(value)})
        ps.push_pull({name: value})  # the first pull fills the held copy
        ins, outs = [], []
        before = table_traffic(ps.stats(), name)
        for _ in range(pulls):
            ps.push_pull({name: value})
            after = table_traffic(ps.stats(), name)
            ins.append(after[0] - before[0])
            outs.append(after[1] - before[1])
            before = after
    push = make_codec(spec).encode(np, value).nbytes
    pull = statistics.median(outs)
    return {
        "codec": spec, "bytes": size, "push_bytes": push, "push_ratio": size / push,
        "push_bytes_server": statistics.median(ins),
        "pull_bytes": pull, "pull_ratio": size / pull if pull else None,
        "pull_bytes_mean": statistics.fmean(outs), "pulls": pulls,
        "pull_ratio_mean": size / statistics.fmean(outs) if any(outs) else None,
    }


def measure_wire(codecs: list[str], pulls: int, out_dir: Path) -> list[dict[str, Any]]:
    rows = []
    with LocalCluster(out_dir / "cluster-wire") as cluster:
        cluster.start_servers(1, server_args(1))
        for index, spec in enumerate(codecs):
            rows.append(wire_row(cluster.addresses[0], spec, index, pulls))
            r = rows[-1]
            print(f"wire {spec:>10}: push {r['push_bytes']:>9} B ({r['push_ratio']:.1f}x), "
                  f"pull {r['pull_bytes']:>11.0f} B", flush=True)
    return rows


def print_wire(rows: list[dict[str, Any]]) -> None:
    pulls = rows[0]["pulls"] if rows else 0
    print(f"\nbytes on the wire, one {WIRE_SIZE} float32 tensor (pull: median delta pull; "
          f"mean: over {pulls} pulls, a full refresh every "
          f"{ClientConfig().full_pull_every})")
    print(f"{'codec':>10} {'push B':>10} {'push x':>7} {'pull B':>10} {'pull x':>7} "
          f"{'mean pull B':>11} {'mean x':>7}")
    for r in rows:
        print(f"{r['codec']:>10} {r['push_bytes']:>10} {r['push_ratio']:7.1f} "
              f"{r['pull_bytes']:10.0f} {_ratio(r['pull_ratio']):>7} "
              f"{r['pull_bytes_mean']:11.0f} {_ratio(r['pull_ratio_mean']):>7}")


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


# ---------------------------------------------------------------- 2. throughput


@dataclass(frozen=True, slots=True)
class Rendezvous:
    """What the worker processes of one cell share: a start barrier, and the round count
    they all stop at, fixed by the first worker whose time is up (sync rounds: every worker
    must run the same number of rounds, or the last round would wait forever)."""

    start: Any  # multiprocessing.Barrier
    lock: Any  # multiprocessing.Lock
    counts: Any  # multiprocessing.Array of rounds done, per worker
    target: Any  # multiprocessing.Value: the round count to stop at
    out: Any  # multiprocessing.Queue of (rounds, seconds)

    def done(self, index: int, rounds: int, time_up: bool) -> bool:
        """Record ``rounds`` for worker ``index``; whether it should stop now.

        A worker that has finished round r has seen every worker push round r, so the others
        have counts r - 1 (still in round r) or r (already in round r + 1): stopping them all
        at the same round count needs r + 1 in the second case.
        """
        with self.lock:
            self.counts[index] = rounds
            if time_up and self.target.value == NO_TARGET:
                others = [c for i, c in enumerate(self.counts) if i != index]
                self.target.value = max([rounds, *(c + 1 for c in others)])
            return bool(rounds >= self.target.value)


def _throughput_worker(address: str, spec: str, size: int, seconds: float, index: int,
                       meet: Rendezvous) -> None:
    try:
        value = gradient(size, index)
        with zps.Client([address], codec=spec, pull_codec=pull_codec_for(spec)) as ps:
            ps.init({"t": np.zeros_like(value)})
            ps.push_pull({"t": value})  # every worker joined, held copies filled
            meet.start.wait()
            rounds, t0 = 0, time.perf_counter()
            while True:
                ps.push_pull({"t": value})
                rounds += 1
                if meet.done(index, rounds, time.perf_counter() - t0 >= seconds):
                    break
            meet.out.put((rounds, time.perf_counter() - t0))
    except BaseException:
        meet.start.abort()  # the parent and the other workers stop waiting at the barrier
        raise


def push_pull_rate(address: str, spec: str, size: int, workers: int,
                   seconds: float) -> tuple[float, int]:
    """Sync rounds per second of ``workers`` processes push_pulling ``size`` bytes with
    ``spec``, and the rounds run."""
    mpc = mp.get_context("spawn")
    meet = Rendezvous(mpc.Barrier(workers + 1), mpc.Lock(), mpc.Array("q", workers),
                      mpc.Value("q", NO_TARGET), mpc.Queue())
    procs = [mpc.Process(target=_throughput_worker,
                         args=(address, spec, size, seconds, i, meet)) for i in range(workers)]
    for proc in procs:
        proc.start()
    try:
        meet.start.wait(timeout=300)
        results = [collect(meet.out, procs) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
                proc.join()
    rounds = results[0][0]
    return rounds / max(dt for _, dt in results), rounds


def collect(results: Any, procs: list[Any]) -> tuple[int, float]:
    """The next item on ``results``; an error if every process ended without one."""
    while True:
        try:
            return results.get(timeout=1.0)  # type: ignore[no-any-return]
        except queue.Empty:  # are the workers still there?
            if all(p.exitcode is not None for p in procs) and results.empty():
                codes = [p.exitcode for p in procs]
                raise RuntimeError(f"throughput workers ended with {codes}") from None


def measure_throughput(codecs: list[str], cells: list[tuple[str, int]], seconds: float,
                       out_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for label, workers in cells:
        size = SIZES[label]
        none_rate = 0.0
        for spec in ["none", *(c for c in codecs if c != "none")]:
            folder = out_dir / f"cluster-{label}-{workers}"
            with LocalCluster(folder) as cluster:
                cluster.start_servers(1, server_args(workers))
                rate, rounds = push_pull_rate(cluster.addresses[0], spec, size, workers,
                                              seconds)
            none_rate = rate if spec == "none" else none_rate
            row = {"codec": spec, "size": label, "bytes": size, "workers": workers,
                   "rounds": rounds, "rounds_per_s": rate,
                   "dense_gb_per_s": rate * workers * 2 * size / 1e9,
                   "speedup_over_none": rate / none_rate}
            rows.append(row)
            print(f"push_pull {spec:>10} {label:>6} workers={workers}: {rate:7.2f} rounds/s "
                  f"{row['dense_gb_per_s']:6.2f} GB/s ({row['speedup_over_none']:.2f}x none, "
                  f"{rounds} rounds)", flush=True)
    return rows


def print_throughput(rows: list[dict[str, Any]], seconds: float) -> None:
    print(f"\npush_pull, sync mode, one server, ~{seconds:g} s per cell (GB/s: dense bytes "
          "pushed and pulled by all workers)")
    print(f"{'codec':>10} {'size':>6} {'wk':>3} {'rounds':>6} {'rounds/s':>9} {'GB/s':>6} "
          f"{'x none':>7}")
    for r in rows:
        print(f"{r['codec']:>10} {r['size']:>6} {r['workers']:>3} {r['rounds']:>6} "
              f"{r['rounds_per_s']:9.2f} {r['dense_gb_per_s']:6.2f} "
              f"{r['speedup_over_none']:7.2f}")


# ---------------------------------------------------------------- 3. encode/decode cost


def median_ms(call: Callable[[], object], repeat: int) -> float:
    call()  # warm: first touch of fresh pages, caches
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def cost_row(spec: str, label: str, repeat: int) -> dict[str, Any]:
    codec = make_codec(spec)
    value = gradient(SIZES[label], 0)
    encoded = codec.encode(np, value)
    out = np.zeros_like(value)
    feedback = ErrorFeedback(codec, np)
    return {
        "codec": spec, "size": label, "bytes": value.nbytes,
        "encode_ms": median_ms(lambda: codec.encode(np, value), repeat),
        "encode_ef_ms": (median_ms(lambda: feedback.encode("t", value), repeat)
                         if not codec.lossless else None),
        "decode_add_ms": median_ms(lambda: codec.decode_add(encoded, out), repeat),
    }


def measure_cost(codecs: list[str], sizes: list[str], repeat: int) -> list[dict[str, Any]]:
    rows = []
    for label in sizes:
        for spec in codecs:
            rows.append(cost_row(spec, label, repeat))
            r = rows[-1]
            print(f"cost {spec:>10} {label:>6}: encode {r['encode_ms']:8.1f} ms, decode_add "
                  f"{r['decode_add_ms']:7.1f} ms", flush=True)
    return rows


def print_cost(rows: list[dict[str, Any]], repeat: int) -> None:
    print(f"\ncodec cost in one process, median of {repeat} (ms per tensor; EF: encode with "
          "error feedback)")
    print(f"{'codec':>10} {'size':>6} {'encode':>8} {'enc+EF':>8} {'decode_add':>10}")
    for r in rows:
        ef = "-" if r["encode_ef_ms"] is None else f"{r['encode_ef_ms']:.1f}"
        print(f"{r['codec']:>10} {r['size']:>6} {r['encode_ms']:8.1f} {ef:>8} "
              f"{r['decode_add_ms']:10.1f}")


# ---------------------------------------------------------------- 4. kernels


def kernel_row(spec: str, kernels: bool, repeat: int) -> dict[str, Any]:
    """GB/s on one core for ``spec`` on a 64 MiB float32 tensor, kernels on or off."""
    previous = use_kernels(kernels)
    try:
        codec = make_codec(spec, seed=0)
        value = gradient(SIZES[KERNEL_SIZE], 0)
        encoded = codec.encode(np, value)
        out = np.zeros_like(value)
        feedback = ErrorFeedback(codec, np)

        def rate(call: Callable[[], object]) -> float:
            return value.nbytes / median_ms(call, repeat) / 1e6

        return {
            "codec": spec, "kernels": kernels, "size": KERNEL_SIZE, "bytes": value.nbytes,
            "encode_gb_per_s": rate(lambda: codec.encode(np, value)),
            "encode_ef_gb_per_s": rate(lambda: feedback.encode("t", value)),
            "decode_add_gb_per_s": rate(lambda: codec.decode_add(encoded, out, 0.5)),
            "load_average": os.getloadavg()[0],
        }
    finally:
        use_kernels(previous)


def measure_kernels(codecs: list[str], repeat: int) -> list[dict[str, Any]]:
    """Kernel and NumPy rows for each lossy codec but fp16 (which has no kernels); empty
    where numba is not installed."""
    if not kernels_available():
        print("kernels: numba is not installed or failed to compile; no kernel table")
        return []
    rows = []
    for spec in codecs:
        if make_codec(spec).lossless or spec == "fp16":
            continue
        for kernels in (True, False):
            rows.append(kernel_row(spec, kernels, repeat))
            r = rows[-1]
            print(f"kernels={'on ' if kernels else 'off'} {spec:>10}: encode "
                  f"{r['encode_gb_per_s']:5.2f}, +EF {r['encode_ef_gb_per_s']:5.2f}, "
                  f"decode_add {r['decode_add_gb_per_s']:5.2f} GB/s "
                  f"(load {r['load_average']:.2f})", flush=True)
    return rows


def print_kernels(rows: list[dict[str, Any]], repeat: int) -> None:
    if not rows:
        return
    print(f"\ncodec GB/s on one core, {KERNEL_SIZE} float32, median of {repeat} (compiled "
          "kernels against the NumPy code; EF: a push with error feedback; load: 1-minute "
          f"load average on {os.cpu_count()} CPUs)")
    print(f"{'codec':>10} {'path':>7} {'encode':>7} {'enc+EF':>7} {'decode_add':>10} "
          f"{'EF x':>6} {'load':>5}")
    numpy_ef = {r["codec"]: r["encode_ef_gb_per_s"] for r in rows if not r["kernels"]}
    for r in rows:
        speedup = r["encode_ef_gb_per_s"] / numpy_ef[r["codec"]]
        print(f"{r['codec']:>10} {'kernels' if r['kernels'] else 'numpy':>7} "
              f"{r['encode_gb_per_s']:7.2f} {r['encode_ef_gb_per_s']:7.2f} "
              f"{r['decode_add_gb_per_s']:10.2f} {speedup:6.2f} {r['load_average']:5.2f}")


# ---------------------------------------------------------------- 5. accuracy

# How the training workers pull: "same" delta pulls with the push codec, "exact" whole tables.
PULL_MODES = ("same", "exact")


@dataclass(frozen=True, slots=True)
class Setting:
    """One training configuration: push codec, error feedback on pushes, pull mode."""

    codec: str
    feedback: bool
    pulls: str

    @property
    def pull_codec(self) -> str | None:
        return pull_codec_for(self.codec) if self.pulls == "same" else None

    @property
    def label(self) -> str:
        if make_codec(self.codec).lossless:
            return self.codec
        pull = f"pull {self.codec}" if self.pull_codec else "exact pull"
        return f"{self.codec} {'EF' if self.feedback else 'no EF'}, {pull}"


def settings(codecs: list[str], pull_modes: list[str], ef_only: bool) -> list[Setting]:
    """Lossless codecs once (whole-table pulls); each lossy one with and (unless
    ``ef_only``) without error feedback, in each pull mode."""
    lossy = [spec for spec in codecs if not make_codec(spec).lossless]
    feedbacks = (True,) if ef_only else (True, False)
    return [Setting(spec, True, "exact") for spec in codecs if spec not in lossy] + [
        Setting(spec, feedback, pulls)
        for pulls in pull_modes for feedback in feedbacks for spec in lossy]


def train_once(setting: Setting, seed: int, args: argparse.Namespace,
               folder: Path) -> dict[str, Any]:
    """Train the digits MLP once; mean final test accuracy over the workers, bytes moved."""
    workers = args.train_workers
    codec_args = ["--codec", setting.codec]
    if setting.pull_codec is not None:
        codec_args += ["--pull-codec", setting.pull_codec]
    if not setting.feedback:
        codec_args.append("--no-error-feedback")
    with LocalCluster(folder) as cluster:
        cluster.start_servers(1, server_args(workers))
        for index in range(workers):
            cluster.start_worker([
                "--num-workers", str(workers), "--worker-index", str(index),
                "--epochs", str(args.epochs), "--seed", str(seed), "--quiet",
                "--metrics-out", str(folder / f"worker{index}.json"), *codec_args,
            ], quiet_stdout=True)
        codes = cluster.wait_workers(timeout=900)
        if any(codes):
            raise SystemExit(f"{setting.label}: workers exited with {codes}; see {folder}")
        with zps.Client(cluster.addresses, role="observer", heartbeat_interval=0) as ps:
            stats = ps.stats()
    results = [json.loads((folder / f"worker{i}.json").read_text()) for i in range(workers)]
    tables = [t for s in stats for t in s["tables"]]
    return {
        "seed": seed,
        "test_accuracy": statistics.fmean(r["test_accuracy"] for r in results),
        "bytes_in": sum(t["bytes_in"] for t in tables),
        "bytes_out": sum(t["bytes_out"] for t in tables),
        "seconds": max(r["seconds"] for r in results),
    }


def measure_accuracy(codecs: list[str], args: argparse.Namespace,
                     out_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for setting in settings(codecs, args.train_pulls, args.ef_only):
        runs = []
        for seed in range(args.seeds):
            name = setting.label.replace(",", "").replace(" ", "-").replace(":", "")
            runs.append(train_once(setting, seed, args, out_dir / "train" / f"{name}-s{seed}"))
        row: dict[str, Any] = {
            "codec": setting.codec, "error_feedback": setting.feedback,
            "pulls": setting.pulls, "pull_codec": setting.pull_codec, "label": setting.label,
            "runs": runs,
            "test_accuracy": statistics.fmean(r["test_accuracy"] for r in runs),
            "bytes_in": statistics.fmean(r["bytes_in"] for r in runs),
            "bytes_out": statistics.fmean(r["bytes_out"] for r in runs),
        }
        rows.append(row)
        print(f"train {setting.label:>30}: test accuracy {row['test_accuracy']:.4f}, pushed "
              f"{row['bytes_in'] / 1e6:8.2f} MB", flush=True)
    return rows


def print_accuracy(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\ndigits MLP, {args.train_workers} workers, sync, {args.epochs} epochs, mean over "
          f"workers and {args.seeds} seed(s) (pulls: delta pulls with the push codec, or "
          "exact whole tables)")
    print(f"{'codec':>10} {'EF':>3} {'pulls':>10} {'test acc':>8} {'vs none':>8} "
          f"{'pushed MB':>10} {'pulled MB':>10}")
    base = next((r["test_accuracy"] for r in rows if r["codec"] == "none"), None)
    for r in rows:
        delta = "-" if base is None else f"{(r['test_accuracy'] - base) * 100:+.2f}"
        ef = "-" if make_codec(r["codec"]).lossless else ("yes" if r["error_feedback"] else "no")
        print(f"{r['codec']:>10} {ef:>3} {r['pull_codec'] or 'exact':>10} "
              f"{r['test_accuracy']:8.4f} {delta:>8} {r['bytes_in'] / 1e6:10.2f} "
              f"{r['bytes_out'] / 1e6:10.2f}")


# ---------------------------------------------------------------- targets, plot


def check_targets(throughput: list[dict[str, Any]], accuracy: list[dict[str, Any]],
                  kernels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issues' targets against the measured figures (None: not measured in this run);
    the accuracy targets once per pull mode."""
    acc = {(r["codec"], r["error_feedback"], r["pulls"]): r["test_accuracy"]
           for r in accuracy}
    speed = {(r["codec"], r["size"], r["workers"]): r["speedup_over_none"]
             for r in throughput}
    base = acc.get(("none", True, "exact"))

    def drop(spec: str, pulls: str) -> float | None:
        got = acc.get((spec, True, pulls))
        return None if base is None or got is None else (base - got) * 100

    def pulled(spec: str, pulls: str) -> str:
        return f"{spec} delta pulls" if pulls == "same" else "exact pulls"

    # (target, measured, unit, bound, whether the measured figure must be at least bound)
    found: list[tuple[str, float | None, str, float, bool]] = []
    for pulls in PULL_MODES:
        found.append((f"int8 EF accuracy within 0.5 points of none ({pulled('int8', pulls)})",
                      drop("int8", pulls), "points below none", 0.5, False))
    found.append(("int8 push_pull >= 3x none, 64MiB, 4 workers",
                  speed.get(("int8", "64MiB", 4)), "x none", 3.0, True))
    for pulls in PULL_MODES:
        found.append((f"topk:0.01 EF accuracy within 1 point of none "
                      f"({pulled('topk:0.01', pulls)})",
                      drop("topk:0.01", pulls), "points below none", 1.0, False))
    compiled = {r["codec"]: r["encode_ef_gb_per_s"] for r in kernels if r["kernels"]}
    found.append((f"int8 encode with error feedback >= 2 GB/s on one core, {KERNEL_SIZE} "
                  "float32", compiled.get("int8"), "GB/s", 2.0, True))
    return [{"target": name, "measured": value, "unit": unit,
             "met": None if value is None else (value >= bound if at_least else value <= bound)}
            for name, value, unit, bound, at_least in found]


def print_targets(targets: list[dict[str, Any]]) -> None:
    print("\ntargets")
    for t in targets:
        if t["met"] is None:
            print(f"  {t['target']}: not measured in this run")
        else:
            print(f"  {t['target']}: {t['measured']:.2f} {t['unit']} -> "
                  f"{'met' if t['met'] else 'NOT met'}")


def plot(accuracy: list[dict[str, Any]], throughput: list[dict[str, Any]], path: Path,
         title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), dpi=110)
    ax = axes[0]
    # Marker and colour tell the settings of a codec apart; settings that land on the same
    # point (fp16 and int8 often do) share one label.
    labels: dict[tuple[float, float], list[str]] = {}
    for r in accuracy:
        x, y = r["bytes_in"] / 1e6, r["test_accuracy"] * 100
        ax.scatter([x], [y], marker="o" if r["error_feedback"] else "x",
                   color="tab:blue" if r["pull_codec"] is None else "tab:orange")
        names = labels.setdefault((x, y), [])
        names.extend([r["codec"]] if r["codec"] not in names else [])
    for (x, y), names in labels.items():
        ax.annotate(", ".join(names), (x, y), textcoords="offset points", xytext=(5, -3),
                    fontsize=7)
    for marker, color, text in (("o", "tab:blue", "EF, exact pulls"),
                                ("x", "tab:blue", "no EF, exact pulls"),
                                ("o", "tab:orange", "EF, delta pulls with the codec"),
                                ("x", "tab:orange", "no EF, delta pulls with the codec")):
        ax.scatter([], [], marker=marker, color=color, label=text)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_xscale("log")
    ax.set_xlabel("bytes pushed by all workers (MB, log)")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title("digits MLP: accuracy against bytes pushed", fontsize=10)
    ax.grid(alpha=0.3)
    ax = axes[1]
    cells = list(dict.fromkeys((r["size"], r["workers"]) for r in throughput))
    codecs = list(dict.fromkeys(r["codec"] for r in throughput))
    width = 0.8 / max(1, len(codecs))
    for i, spec in enumerate(codecs):
        rates = {(r["size"], r["workers"]): r["dense_gb_per_s"] for r in throughput
                 if r["codec"] == spec}
        ax.bar([c + i * width for c in range(len(cells))],
               [rates.get(cell, 0.0) for cell in cells], width, label=spec)
    ax.set_xticks([c + width * (len(codecs) - 1) / 2 for c in range(len(cells))],
                  [f"{s} x{w}" for s, w in cells])
    ax.set_ylabel("effective dense GB/s")
    ax.set_title("push_pull throughput, sync, one server", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codecs", default=CODECS, help="comma-separated codec specs")
    parser.add_argument("--sizes", default=",".join(SIZES), help="throughput and cost sizes")
    parser.add_argument("--workers", default="1,4", help="throughput worker counts")
    parser.add_argument("--seconds", type=float, default=3.0, help="per throughput cell")
    parser.add_argument("--repeat", type=int, default=5, help="timings per codec cost")
    parser.add_argument("--pulls", type=int, default=ClientConfig().full_pull_every,
                        help="pulls measured per codec for the wire bytes")
    parser.add_argument("--epochs", type=int, default=40, help="digits MLP epochs")
    parser.add_argument("--seeds", type=int, default=3, help="training runs per setting")
    parser.add_argument("--train-workers", type=int, default=4)
    parser.add_argument("--train-pulls", default=",".join(PULL_MODES),
                        help="how training workers pull: same (delta pulls with the push "
                             "codec), exact (whole tables); comma-separated")
    parser.add_argument("--ef-only", action="store_true",
                        help="train lossy codecs with error feedback only")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: throughput of 64MiB x4 only for 1 s, cost of "
                             "16MiB, 3 pulls, training with EF only, 10 epochs, 1 seed")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"what to measure, comma-separated: {', '.join(PARTS)}")
    parser.add_argument("--out", default="bench/results/compression.json")
    args = parser.parse_args()
    args.parts = [p for p in args.parts.split(",") if p]
    if not set(args.parts) <= set(PARTS):
        parser.error(f"--parts: use {', '.join(PARTS)}")
    if args.quick:
        args.sizes, args.workers, args.seconds = "64MiB", "4", 1.0
        args.repeat, args.pulls, args.epochs, args.seeds = 2, 3, 10, 1
        args.ef_only = True
    for spec in args.codecs.split(","):
        make_codec(spec)  # fail now on a bad spec, not after minutes of measuring
    args.train_pulls = [p for p in args.train_pulls.split(",") if p]
    if not set(args.train_pulls) <= set(PULL_MODES):
        parser.error(f"--train-pulls: use {' or '.join(PULL_MODES)}")
    return args


def main() -> int:
    args = parse_args()
    started = time.perf_counter()
    codecs = [c for c in args.codecs.split(",") if c]
    sizes = [s for s in args.sizes.split(",") if s]
    cells = [(s, int(w)) for s in sizes for w in args.workers.split(",") if w]
    out = Path(args.out)
    work = out.parent / "compression"
    parts = set(args.parts)
    wire = measure_wire(codecs, args.pulls, work) if "wire" in parts else []
    throughput = (measure_throughput(codecs, cells, args.seconds, work)
                  if "throughput" in parts else [])
    cost = (measure_cost(codecs, ["16MiB"] if args.quick else sizes, args.repeat)
            if "cost" in parts else [])
    kernels = measure_kernels(codecs, args.repeat) if "kernels" in parts else []
    accuracy = measure_accuracy(codecs, args, work) if "accuracy" in parts else []
    targets = check_targets(throughput, accuracy, kernels)
    if wire:
        print_wire(wire)
    if throughput:
        print_throughput(throughput, args.seconds)
    if cost:
        print_cost(cost, args.repeat)
    print_kernels(kernels, args.repeat)
    if accuracy:
        print_accuracy(accuracy, args)
    print_targets(targets)
    elapsed = time.perf_counter() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": {"python": platform.python_version(), "cpus": mp.cpu_count(),
                    "numpy": np.__version__, "pyzmq": zmq.__version__,
                    "libzmq": zmq.zmq_version(), "kernels": kernels_available(),
                    "load_average": os.getloadavg()},
        "args": vars(args), "seconds": elapsed, "wire": wire, "throughput": throughput,
        "cost": cost, "kernels": kernels, "accuracy": accuracy, "targets": targets,
    }, indent=1))
    written = str(out)
    if accuracy:  # (the plot is accuracy against bytes, with throughput beside it)
        png = out.with_suffix(".png")
        plot(accuracy, throughput, png,
             f"codecs on {mp.cpu_count()} CPUs: digits MLP, {args.train_workers} workers, "
             f"{args.epochs} epochs; push_pull throughput")
        written += f" and {png}"
    print(f"\nwrote {written} ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
