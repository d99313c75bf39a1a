"""zps.torch's DistributedOptimizer against PyTorch's DistributedDataParallel: steps/s.

The same MLP (1024 -> 2048 -> ... -> 10, float32, at least ``--params`` parameters) is
trained by W worker *processes* (spawned), each on a fixed synthetic batch of its own,
with plain SGD, four ways:

* ``ddp``: ``torch.nn.parallel.DistributedDataParallel`` on gloo (loopback, world W);
* ``zps``: ``zps.torch.DistributedOptimizer`` against ``zps-server`` processes in sync
  mode, sends overlapped with backward (hooks on), uncompressed;
* ``int8``: the same with ``codec="int8"`` (pushes compressed, with error feedback);
* ``nooverlap``: ``zps`` with ``overlap=False`` (everything sent from ``step()``).

(``--variants`` may add ``serversgd``: ``zps`` with ``server_optimizer="sgd:LR"``, the
gradients pushed as they are and the servers stepping; and ``local``: plain SGD in every
process, no communication, the compute ceiling.) For each W one set of worker processes
holds one model per variant and runs every variant in turn, ``--reps`` times, the order
rotated each repetition; each time a few warmup steps are excluded and then ``--steps``
steps are timed (a cell's rate: its steps over the slowest worker's time). The figures are
the medians over repetitions.

Every worker process uses ``torch.set_num_threads(1)``; the servers are extra processes on
the same cores. Each row also shows where the time and the CPU went, per step: a worker's
``fwd+bwd`` (forward and backward: DDP's allreduce and zps's overlapped sends happen
there) and ``step`` (``opt.step()``: zps waits for its replies there), a worker's CPU
time (all its threads: ZeroMQ's and gloo's too) and the servers'. ``other load`` is the
cores that processes outside the benchmark kept busy meanwhile (from /proc/stat): a cell
with more than 0.25 is measured again (``--retries``) and the least noisy measurement
kept. At the end, the models are compared: every worker's zps model holds the same values,
and uncompressed zps trains the same parameters as DDP (synchronous SGD both).

    python bench/torch_ddp.py                      # W = 2 and 4, 3 reps (2-4 min on 2 cores)
    python bench/torch_ddp.py --quick              # W = 2 and 4, 2 reps, fewer steps (~1 min)
    python bench/torch_ddp.py --profile zps        # + cProfile of worker 0's timed zps steps
"""

from __future__ import annotations

import argparse
import cProfile
import faulthandler
import io
import json
import math
import multiprocessing as mp
import os
import platform
import pstats
import queue
import signal
import socket
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.throughput import counts
from zps.cli.cluster import LocalCluster

IN, WIDTH, CLASSES = 1024, 2048, 10
VARIANTS = ("ddp", "zps", "int8", "nooverlap", "serversgd", "local")
DEFAULT_VARIANTS = "ddp,zps,int8,nooverlap"
LR = 0.05
NOISY_CORES = 0.25  # cores busy with other processes that make a row noisy


# ---------------------------------------------------------------- the model


def mlp_shape(params: int) -> tuple[int, int]:
    """(hidden width, hidden WIDTHxWIDTH layers) of the smallest MLP of the family
    1024 -> W -> (W -> W) x depth -> 10 with at least ``params`` parameters: width 2048 and
    as many hidden layers as it takes, or one hidden layer narrower than 2048."""
    def count(width: int, depth: int) -> int:
        return IN * width + width + depth * (width * width + width) + width * CLASSES + CLASSES
    if count(WIDTH, 1) >= params:
        width = 8
        while count(width, 1) < params:
            width += 8
        return width, 1
    return WIDTH, 1 + math.ceil((params - count(WIDTH, 1)) / (WIDTH * WIDTH + WIDTH))


def make_model(width: int, depth: int) -> Any:
    import torch

    torch.manual_seed(0)  # the same start in every process and variant
    layers: list[Any] = [torch.nn.Linear(IN, width), torch.nn.ReLU()]
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    layers.append(torch.nn.Linear(width, CLASSES))
    return torch.nn.Sequential(*layers)


def parameter_count(width: int, depth: int) -> int:
    return IN * width + width + depth * (width * width + width) + width * CLASSES + CLASSES


# ---------------------------------------------------------------- worker processes


def _worker(rank: int, world: int, port: int, servers: list[str], cfg: dict[str, Any],
            schedule: list[tuple[int, str]], barrier: Any, again: Any, out: Any) -> None:
    """One worker: set up every variant, then run the cells of ``schedule`` in step with
    the other workers and the parent (``barrier``: before each timed part, and after it,
    when the parent has said in ``again`` whether to measure the cell once more)."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the parent asks on a hang
    try:
        _train(rank, world, port, servers, cfg, schedule, barrier, again, out)
    except BaseException:
        out.put(("error", rank, traceback.format_exc()))
        barrier.abort()  # the others stop waiting for this one
        raise


def _train(rank: int, world: int, port: int, servers: list[str], cfg: dict[str, Any],
           schedule: list[tuple[int, str]], barrier: Any, again: Any, out: Any) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    import zps
    import zps.torch as zt

    torch.set_num_threads(1)
    variants = sorted({v for _, v in schedule}, key=VARIANTS.index)
    gen = torch.Generator().manual_seed(1000 + rank)  # each worker its own fixed batch
    x = torch.randn(cfg["batch"], IN, generator=gen)
    y = torch.randint(0, CLASSES, (cfg["batch"],), generator=gen)
    if "ddp" in variants:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world, timeout=timedelta(seconds=cfg["timeout"]))
    ps = zps.Client(servers) if any(v not in ("ddp", "local") for v in variants) else None
    models: dict[str, Any] = {}
    steps: dict[str, Callable[[], tuple[float, float, float]]] = {}
    for variant in variants:
        model = models[variant] = make_model(cfg["width"], cfg["depth"])
        sgd = torch.optim.SGD(model.parameters(), lr=LR)
        if variant == "ddp":
            net: Any = DistributedDataParallel(model)
            opt: Any = sgd
        else:
            net = model
            opt = sgd
            if variant != "local":
                assert ps is not None
                opt = zt.DistributedOptimizer(
                    sgd, ps, named_parameters=model.named_parameters(), prefix=f"{variant}/",
                    overlap=variant != "nooverlap", bucket_bytes=cfg["bucket_bytes"],
                    codec="int8" if variant == "int8" else None,
                    server_optimizer=f"sgd:{LR}" if variant == "serversgd" else None)
                zt.broadcast_parameters(ps, model, prefix=f"{variant}/")
        steps[variant] = _stepper(net, opt, x, y)
    taken = dict.fromkeys(variants, 0)  # steps each model has trained
    barrier.wait(cfg["timeout"])
    for rep, variant in schedule:
        while True:
            taken[variant] += cfg["warmup"] + cfg["steps"]
            for _ in range(cfg["warmup"]):
                steps[variant]()
            barrier.wait(cfg["timeout"])
            out.put(("cell", rank, _timed(rank, rep, variant, steps[variant], cfg, out)))
            barrier.wait(cfg["timeout"])  # the parent has decided
            if not again.value:
                break
    out.put(("final", rank, {"rank": rank, **_fingerprints(models, taken)}))
    barrier.wait(cfg["timeout"])  # nobody leaves (closing gloo, saying bye) while others step
    if ps is not None:
        ps.close()
    if "ddp" in variants:
        dist.destroy_process_group()


def _timed(rank: int, rep: int, variant: str, step: Callable[[], tuple[float, float, float]],
           cfg: dict[str, Any], out: Any) -> dict[str, Any]:
    """``cfg["steps"]`` timed steps: this worker's times and CPU; on worker 0 also the
    servers' CPU and the machine's busy time (and a profile, if asked for)."""
    profiler = cProfile.Profile() if rank == 0 and variant == cfg["profile"] else None
    fwd_bwd = in_step = loss = 0.0
    if profiler is not None:
        profiler.enable()
    busy0, server0 = (machine_busy(), process_cpu(cfg["server_pids"])) if rank == 0 \
        else (None, None)
    cpu0, t0 = time.process_time(), time.perf_counter()
    for _ in range(cfg["steps"]):
        a, b, loss = step()
        fwd_bwd += a
        in_step += b
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    busy, server = (machine_busy(), process_cpu(cfg["server_pids"])) if rank == 0 \
        else (None, None)
    if profiler is not None:
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(18)
        out.put(("profile", rank, (rep, variant, text.getvalue())))
    return {"rank": rank, "rep": rep, "variant": variant, "seconds": elapsed,
            "fwd_bwd": fwd_bwd, "step": in_step, "loss": loss, "cpu": cpu,
            "machine_busy": _delta(busy0, busy), "server_cpu": _delta(server0, server)}


def _delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def process_cpu(pids: list[int]) -> float | None:
    """CPU seconds (user + system, every thread) the processes ``pids`` have used so far;
    None where /proc cannot tell."""
    total = 0
    try:
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    except (OSError, IndexError, ValueError):
        return None
    return total / os.sysconf("SC_CLK_TCK")


def machine_busy() -> float | None:
    """CPU seconds every core of this machine has been busy so far (/proc/stat)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _stepper(net: Any, opt: Any, x: Any,
             y: Any) -> Callable[[], tuple[float, float, float]]:
    import torch

    def step() -> tuple[float, float, float]:
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        t1 = time.perf_counter()
        opt.step()
        return t1 - t0, time.perf_counter() - t1, float(loss.detach())
    return step


def _fingerprints(models: dict[str, Any], taken: dict[str, int]) -> dict[str, Any]:
    """Per variant: the steps its model took, the sum of all its parameters (float64), and
    the largest difference of any parameter from the DDP model's."""
    import torch

    found: dict[str, Any] = {}
    ref = models.get("ddp")
    for variant, model in models.items():
        with torch.no_grad():
            params = list(model.parameters())
            total = sum(float(p.double().sum()) for p in params)
            diff = None
            if ref is not None:
                diff = max(float((p - q).abs().max())
                           for p, q in zip(params, ref.parameters(), strict=True))
        found[variant] = {"steps": taken[variant], "sum": total, "max_diff_ddp": diff}
    return found


# ---------------------------------------------------------------- one worker count


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_world(world: int, args: argparse.Namespace, cfg: dict[str, Any],
              variants: list[str]) -> dict[str, Any]:
    """Start the servers and ``world`` workers and run every cell; the cells' results (a
    cell measured again for noise: its least noisy measurement)."""
    schedule = [(rep, variants[(i + rep) % len(variants)])
                for rep in range(args.reps) for i in range(len(variants))]
    mpc = mp.get_context("spawn")
    barrier, again, out = mpc.Barrier(world + 1), mpc.Value("i", 0), mpc.Queue()
    cells: dict[tuple[int, str], list[dict[str, Any]]] = {}
    profiles: dict[tuple[int, str], str] = {}
    retried = 0
    out_dir = Path(args.out).parent / f"torch_ddp-w{world}"
    with LocalCluster(out_dir) as cluster:
        cluster.start_servers(args.servers, ["--mode", "sync", "--workers", str(world),
                                             "--log-level", "warning"])
        cfg = {**cfg, "server_pids": [proc.pid for proc in cluster.servers]}
        port = free_port()
        procs = [mpc.Process(target=_worker, args=(rank, world, port, cluster.addresses, cfg,
                                                    schedule, barrier, again, out))
                 for rank in range(world)]
        for proc in procs:
            proc.start()
        inbox = Inbox(out, procs, barrier, profiles, cfg["timeout"])
        try:
            inbox.meet()  # every worker set up
            for key in schedule:
                for attempt in range(args.retries + 1):
                    inbox.meet()  # warmed up: go
                    ranks = inbox.take("cell", world)
                    other = cell_figures(cfg["steps"], ranks)["other_cores"]
                    noisy = other is not None and other > NOISY_CORES
                    best = cells.get(key)
                    if best is None or (other or 0.0) < (
                            cell_figures(cfg["steps"], best)["other_cores"] or 0.0):
                        cells[key] = ranks
                    again.value = int(noisy and attempt < args.retries)
                    retried += again.value
                    report_cell(world, cfg["steps"], ranks, " (noisy: again)" * again.value)
                    inbox.meet()
                    if not again.value:
                        break
            finals = {body["rank"]: body for body in inbox.take("final", world)}
            inbox.meet()  # everyone done: they may leave
            for proc in procs:
                proc.join(30)
        finally:
            for proc in procs:  # only after a failure: these are the ones started here
                if proc.is_alive():
                    proc.terminate()
                    proc.join(10)
    return {"cells": cells, "finals": finals, "retried": retried,
            "profiles": [(rep, v, text) for (rep, v), text in profiles.items()]}


class Inbox:
    """The parent's side of the workers' queue and barrier; a worker's failure (its
    traceback, or its exit code) is raised as ``RuntimeError`` wherever the parent waits."""

    def __init__(self, out: Any, procs: list[Any], barrier: Any,
                 profiles: dict[tuple[int, str], str], timeout: float) -> None:
        self.out, self.procs, self.barrier, self.profiles = out, procs, barrier, profiles
        self.timeout = timeout

    def meet(self) -> None:
        try:
            self.barrier.wait(self.timeout)
        except threading.BrokenBarrierError:
            self._failed(drain=True)
            self._dump()
            raise RuntimeError(f"the workers did not meet within {self.timeout:g} s") from None

    def take(self, kind: str, count: int) -> list[dict[str, Any]]:
        """The next ``count`` messages of ``kind`` (profiles are kept on the way)."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.timeout
        while len(got) < count:
            try:
                what, _, body = self.out.get(timeout=1.0)
            except queue.Empty:
                self._failed()
                if time.monotonic() > deadline:
                    self._dump()
                    raise RuntimeError(f"no result within {self.timeout:g} s (the workers' "
                                       "stacks are above)") from None
                continue
            if what == "error":
                self._raise(body)
            if what == "profile":
                rep, variant, text = body
                self.profiles[(rep, variant)] = text
            elif what == kind:
                got.append(body)
        return got

    def _failed(self, drain: bool = False) -> None:
        """Raise the exit code of a worker that died; with ``drain`` (the run is failing
        anyway: what is queued is dropped), first the error a worker sent, if any."""
        try:
            while drain:
                what, _, body = self.out.get(timeout=0.5)
                if what == "error":
                    self._raise(body)
        except queue.Empty:
            pass
        dead = [p for p in self.procs if p.exitcode not in (None, 0)]
        if dead:
            raise RuntimeError(f"a worker exited with code {dead[0].exitcode}")

    def _dump(self) -> None:
        """Have every live worker print its threads' stacks (to stderr)."""
        for proc in self.procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGUSR1)
        time.sleep(2.0)

    def _raise(self, text: str) -> None:
        """A worker's traceback, its last line first; with the exit code of any worker that
        died (whose death the others' errors are usually about)."""
        time.sleep(1.0)
        dead = [f"worker {i} exited with code {p.exitcode}" for i, p in enumerate(self.procs)
                if p.exitcode not in (None, 0, 1)]
        last = text.strip().splitlines()[-1]
        raise RuntimeError("; ".join([*dead, f"a worker failed: {last}"]) + f"\n\n{text}")


def cell_figures(steps: int, ranks: list[dict[str, Any]]) -> dict[str, float | None]:
    """One cell's figures: the job's steps/s (its steps over the slowest worker's time); per
    step, a worker's mean time in forward+backward and in ``step()`` and its CPU time (all
    its threads), and the CPU time of the servers; the cores other processes of this
    machine kept busy meanwhile (on average), which is noise in the figure."""
    seconds = max(r["seconds"] for r in ranks)
    r0 = next(r for r in ranks if r["rank"] == 0)  # (it reads the servers and the machine)
    ours = sum(r["cpu"] for r in ranks) + (r0["server_cpu"] or 0.0)
    return {
        "steps_per_s": steps / seconds,
        "fwd_bwd_ms": statistics.mean(r["fwd_bwd"] for r in ranks) / steps * 1e3,
        "step_ms": statistics.mean(r["step"] for r in ranks) / steps * 1e3,
        "worker_cpu_ms": statistics.mean(r["cpu"] for r in ranks) / steps * 1e3,
        "server_cpu_ms": None if r0["server_cpu"] is None else r0["server_cpu"] / steps * 1e3,
        "other_cores": None if r0["machine_busy"] is None
        else max(0.0, r0["machine_busy"] - ours) / r0["seconds"],
    }


def ms(value: float | None, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}.1f}"


def report_cell(world: int, steps: int, ranks: list[dict[str, Any]], note: str = "") -> None:
    r0, f = ranks[0], cell_figures(steps, ranks)
    other = "" if f["other_cores"] is None else f", other load {f['other_cores']:.2f} cores"
    print(f"  W={world} rep {r0['rep']} {r0['variant']:>9}: {f['steps_per_s']:6.2f} steps/s "
          f"(fwd+bwd {ms(f['fwd_bwd_ms'], 0)} ms, step {ms(f['step_ms'], 0)} ms, worker cpu "
          f"{ms(f['worker_cpu_ms'], 0)} ms, server cpu {ms(f['server_cpu_ms'], 0)} ms"
          f"{other}; loss {r0['loss']:.3f}){note}", flush=True)


FIGURES = ("steps_per_s", "fwd_bwd_ms", "step_ms", "worker_cpu_ms", "server_cpu_ms",
           "other_cores")


def summarize(world: int, result: dict[str, Any], steps: int,
              variants: list[str]) -> dict[str, Any]:
    """Medians over repetitions per variant, the ratios, and the end-of-run comparison."""
    per: dict[str, dict[str, Any]] = {}
    for variant in variants:
        runs = [cell_figures(steps, ranks)
                for (_, v), ranks in sorted(result["cells"].items()) if v == variant]
        per[variant] = {"reps": [r["steps_per_s"] for r in runs]}
        for key in FIGURES:
            values = [x for x in (r[key] for r in runs) if x is not None]
            per[variant][key] = statistics.median(values) if values else None
    rate = {v: p["steps_per_s"] for v, p in per.items()}
    ratios = {}
    for key, top, bottom in (("zps/ddp", "zps", "ddp"), ("int8/ddp", "int8", "ddp"),
                             ("overlap on/off", "zps", "nooverlap")):
        if top in rate and bottom in rate:
            ratios[key] = rate[top] / rate[bottom]
    finals = result["finals"]
    synced = [v for v in variants if v != "local"]  # (local workers each go their own way)
    agree = {v: len({finals[r][v]["sum"] for r in finals}) == 1 for v in synced}
    # (a cell measured again trained its model for more steps: that one is not compared)
    ref = finals[0].get("ddp")
    diff = {v: finals[0][v]["max_diff_ddp"] for v in synced
            if ref is not None and v != "ddp" and finals[0][v]["steps"] == ref["steps"]}
    return {"workers": world, "variants": per, "ratios": ratios, "retried": result["retried"],
            "workers_agree": agree, "max_diff_from_ddp": diff}


def print_table(rows: list[dict[str, Any]], variants: list[str]) -> None:
    print(f"\n{'W':>2} {'variant':>9} {'steps/s':>8} {'min':>6} {'max':>6} "
          f"{'fwd+bwd ms':>10} {'step ms':>8} {'worker cpu':>10} {'server cpu':>10} "
          f"{'other load':>10}")
    for row in rows:
        for v in variants:
            p = row["variants"][v]
            other = "-" if p["other_cores"] is None else f"{p['other_cores']:.2f}"
            print(f"{row['workers']:>2} {v:>9} {p['steps_per_s']:8.2f} {min(p['reps']):6.2f} "
                  f"{max(p['reps']):6.2f} {ms(p['fwd_bwd_ms'], 10)} {ms(p['step_ms'], 8)} "
                  f"{ms(p['worker_cpu_ms'], 10)} {ms(p['server_cpu_ms'], 10)} {other:>10}")
    print("(medians over reps; times and CPU are ms per step, a worker's mean; other load: "
          "cores busy with other processes)")
    keys = [k for k in ("zps/ddp", "int8/ddp", "overlap on/off") if k in rows[0]["ratios"]]
    if keys:
        print(f"\n{'W':>2} " + " ".join(f"{k:>14}" for k in keys))
        for row in rows:
            print(f"{row['workers']:>2} " + " ".join(f"{row['ratios'][k]:14.2f}" for k in keys))


# ---------------------------------------------------------------- arguments


def model_size(text: str) -> int:
    """An argparse type: a parameter count, ``10M``, ``2.5M``, ``500k`` or ``10000000``."""
    scale = {"k": 1e3, "m": 1e6}.get(text[-1:].lower(), 1.0)
    digits = text[:-1] if scale != 1.0 else text
    try:
        value = float(digits) * scale
    except ValueError:
        value = 0.0
    if not math.isfinite(value) or value < 1e5 or value > 1e9:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a parameter count from 100k to 1000M, e.g. 10M")
    return int(value)


def positive(text: str) -> int:
    """An argparse type: one positive integer."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive integer")
    return value


def non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give an integer >= 0")
    return value


def variant_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if not names or unknown or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give distinct variants from {','.join(VARIANTS)}")
    return sorted(names, key=VARIANTS.index)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=counts, default="2,4", help="worker counts W")
    parser.add_argument("--params", type=model_size, default="10M",
                        help="the model's size, at least this many parameters")
    parser.add_argument("--steps", type=positive, default=None,
                        help="timed steps per cell (default 10; --quick 5)")
    parser.add_argument("--reps", type=positive, default=None,
                        help="repetitions of every variant (default 3; --quick 2)")
    parser.add_argument("--warmup", type=non_negative, default=None,
                        help="untimed steps before each cell (default 2; --quick 1)")
    parser.add_argument("--servers", type=positive, default=1, help="zps server processes")
    parser.add_argument("--batch", type=positive, default=32, help="samples per worker")
    parser.add_argument("--bucket-mb", type=float, default=4.0,
                        help="DistributedOptimizer's bucket_bytes, in MiB")
    parser.add_argument("--retries", type=non_negative, default=1,
                        help="measure a cell again, up to this many times, while other "
                             f"processes keep more than {NOISY_CORES} cores busy during it")
    parser.add_argument("--timeout", type=positive, default=300,
                        help="seconds a cell (or the setup) may take before the run stops")
    parser.add_argument("--variants", type=variant_list, default=DEFAULT_VARIANTS)
    parser.add_argument("--profile", choices=VARIANTS, default=None,
                        help="cProfile worker 0's timed steps of this variant")
    parser.add_argument("--quick", action="store_true",
                        help="fewer steps and repetitions (about a minute)")
    parser.add_argument("--out", default="bench/results/torch_ddp.json")
    args = parser.parse_args()
    if not 0 < args.bucket_mb <= 1024:
        parser.error(f"--bucket-mb {args.bucket_mb:g}: give a size in (0, 1024] MiB")
    if args.profile is not None and args.profile not in args.variants:
        parser.error(f"--profile {args.profile}: not one of --variants "
                     f"{','.join(args.variants)}")
    quick = {"steps": 5, "reps": 2, "warmup": 1}
    full = {"steps": 10, "reps": 3, "warmup": 2}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    width, depth = mlp_shape(args.params)
    n_params = parameter_count(width, depth)
    cfg = {"width": width, "depth": depth, "batch": args.batch, "steps": args.steps,
           "warmup": args.warmup, "bucket_bytes": int(args.bucket_mb * (1 << 20)),
           "profile": args.profile, "timeout": args.timeout}
    cores = os.cpu_count() or 1
    print(f"MLP {IN} -> {width} -> ({width} -> {width}) x {depth} -> {CLASSES}: "
          f"{n_params / 1e6:.1f}M float32 parameters ({n_params * 4 / 2**20:.0f} MiB), "
          f"batch {args.batch} per worker, SGD lr {LR}")
    print(f"this machine has {cores} CPU cores; every worker process runs "
          f"torch.set_num_threads(1), and the {args.servers} zps server process(es) share "
          "the same cores")
    print(f"per cell: {args.warmup} warmup steps, {args.steps} timed; {args.reps} reps of "
          f"each variant ({','.join(args.variants)}), order rotated each rep\n")
    started = time.perf_counter()
    rows = []
    profiles = []
    for world in args.workers:
        try:
            result = run_world(world, args, cfg, args.variants)
        except RuntimeError as exc:
            print(f"\nW={world}: {exc}", file=sys.stderr)
            return 1
        rows.append(summarize(world, result, args.steps, args.variants))
        profiles += [(world, *p) for p in result["profiles"]]
    print_table(rows, args.variants)
    print()
    for row in rows:
        diffs = ", ".join(f"{v} {d:.2g}" for v, d in row["max_diff_from_ddp"].items()
                          if d is not None)
        agree = ", ".join(v for v, ok in row["workers_agree"].items() if not ok)
        print(f"W={row['workers']}: {row['retried']} cell(s) measured again for noise; "
              "every worker's model equal across workers: "
              f"{'yes' if not agree else 'NO for ' + agree}"
              + (f"; largest parameter difference from DDP after the same steps: {diffs}"
                 if diffs else "; not compared with DDP (cells measured again trained "
                 "some models for more steps)"))
    noisy = [(row["workers"], v, p["other_cores"]) for row in rows
             for v, p in row["variants"].items()
             if p["other_cores"] is not None and p["other_cores"] > NOISY_CORES]
    if noisy:
        print("\nnoisy: other processes kept cores busy during the cells ("
              + ", ".join(f"W={w} {v} {c:.2f}" for w, v, c in noisy)
              + f" cores, median) on this {cores}-core machine; the figures are lower and "
              "less even than on a quiet one")
    for world, rep, variant, text in profiles:
        print(f"\ncProfile, worker 0, W={world}, {variant}, rep {rep} "
              f"({args.steps} timed steps):\n{text}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "machine": {"python": platform.python_version(), "cpus": cores,
                    "platform": platform.platform()},
        "model": {"width": width, "depth": depth, "params": n_params},
        "settings": {**cfg, "reps": args.reps, "servers": args.servers,
                     "variants": args.variants, "threads_per_worker": 1},
        "seconds": time.perf_counter() - started, "rows": rows}, indent=1))
    print(f"\nwrote {args.out} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
