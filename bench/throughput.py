"""Push, pull and push_pull throughput of one tensor, against a raw pyzmq ceiling.

For each tensor size, worker count and server count, worker *processes* run one operation
back to back for a fixed time against ``zps-server`` processes (async mode, so workers do
not wait on each other's rounds). In the same run, the ceiling: a raw pyzmq DEALER/ROUTER
echo of the same sizes with the same number of client processes (sync pyzmq, zero-copy),
the best a Python program can do on this machine's loopback. Prints a table, writes JSON.

    python bench/throughput.py                 # the full grid (a few minutes)
    python bench/throughput.py --quick         # fewer cells, for a smoke run
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import statistics
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zps
from zps.cli.cluster import LocalCluster

SIZES = {"4KiB": 4 << 10, "64KiB": 64 << 10, "1MiB": 1 << 20, "16MiB": 16 << 20,
         "64MiB": 64 << 20}
OPS = ("push", "pull", "push_pull")


# ---------------------------------------------------------------- raw pyzmq ceiling


def bound_router(address: str, ready: Any) -> zmq.Socket:
    """A ROUTER bound to ``address`` in a new context; ``ready`` set once it is."""
    sock = zmq.Context().socket(zmq.ROUTER)
    sock.bind(address)
    ready.set()
    return sock


def _echo_server(address: str, ready: Any) -> None:
    sock = bound_router(address, ready)
    while True:
        frames = sock.recv_multipart(copy=False)
        if len(frames) == 2 and frames[1].bytes == b"stop":
            break
        sock.send_multipart(frames, copy=False)
    sock.close(linger=0)
    sock.context.term()


def _raw_client(address: str, size: int, seconds: float, start: Any, out: Any) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(address)
    payload = np.ones(size // 4, np.float32)
    sock.send_multipart([b"h", payload.data], copy=False)
    sock.recv_multipart(copy=False)
    start.wait()
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sock.send_multipart([b"h", payload.data], copy=size < 65536)
        sock.recv_multipart(copy=False)
        count += 1
    out.put((count, time.perf_counter() - t0))
    sock.close(linger=0)
    ctx.term()


def raw_echo(size: int, workers: int, seconds: float) -> float:
    """Round trips per second of ``workers`` raw DEALER clients echoing ``size`` bytes."""
    mpc = mp.get_context("spawn")
    with zmq.Context() as tmp:
        probe = tmp.socket(zmq.ROUTER)
        port = probe.bind_to_random_port("tcp://127.0.0.1")
        probe.close(linger=0)
    address = f"tcp://127.0.0.1:{port}"
    ready = mpc.Event()
    server = mpc.Process(target=_echo_server, args=(address, ready))
    server.start()
    ready.wait(30)
    rate = run_timed(_raw_client, (address, size, seconds), workers)
    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as stop:
        stop.connect(address)
        stop.send(b"stop")
        server.join(10)
        stop.close(linger=0)
    return rate


# ---------------------------------------------------------------- zps


def _zps_client(servers: list[str], op: str, size: int, seconds: float, own: int,
                inflight: int, index: int, start: Any, out: Any) -> None:
    # own > 0: each of the ``own`` workers pushes a table of its own (all init all of
    # them, so they are spread over the servers alike); else all push one table.
    names = [f"t{size}-{i}" for i in range(own)] if own else [f"t{size}"]
    name = names[index] if own else names[0]
    value = np.ones(size // 4, np.float32)
    with zps.Client(servers, heartbeat_interval=0) as ps:
        ps.init({n: np.zeros_like(value) for n in names})
        call = {
            "push": lambda wait=True: ps.push({name: value}, wait=wait),
            "pull": lambda wait=True: ps.pull([name], wait=wait),
            "push_pull": lambda wait=True: ps.push_pull({name: value}, wait=wait),
        }[op]
        timed_loop(call if inflight == 1 else windowed(call, inflight), seconds, start, out)


def windowed(call: Any, inflight: int) -> Any:
    """``call`` with up to ``inflight`` started and unfinished (``wait=False`` handles):
    each call starts one and, with the window full, waits for the oldest."""
    window: deque[Any] = deque()

    def step() -> None:
        window.append(call(wait=False))
        if len(window) >= inflight:
            window.popleft().wait()
    return step


def zps_rate(servers: list[str], op: str, size: int, workers: int, seconds: float,
             own: bool = False, inflight: int = 1) -> float:
    """Operations per second summed over ``workers`` worker processes (``own``: a table
    each, else one table for all; ``inflight``: calls each keeps in flight)."""
    return run_timed(_zps_client, (servers, op, size, seconds, workers if own else 0,
                                   inflight), workers, indexed=True)


def timed_loop(call: Any, seconds: float, start: Any, out: Any) -> None:
    """Warm ``call`` up, wait at the barrier ``start``, call it for ``seconds`` and put
    ``(count, seconds taken)`` on ``out``: the body of every timed worker process."""
    call()
    start.wait()
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        call()
        count += 1
    out.put((count, time.perf_counter() - t0))


def run_timed(target: Any, args: tuple[Any, ...], workers: int,
              indexed: bool = False) -> float:
    """Start ``workers`` processes of ``target(*args, start, out)`` together; summed rate
    (``indexed``: ``target(*args, i, start, out)`` for process i).

    Each process gets ready, waits at the barrier ``start``, runs for its time and puts
    ``(count, seconds)`` on ``out``.
    """
    mpc = mp.get_context("spawn")
    start, out = mpc.Barrier(workers + 1), mpc.Queue()
    procs = [mpc.Process(target=target, args=(*args, *((i,) if indexed else ()), start, out))
             for i in range(workers)]
    for proc in procs:
        proc.start()
    start.wait()
    rate = sum(n / dt for n, dt in (out.get(timeout=300) for _ in procs))
    for proc in procs:
        proc.join()
    return rate


def moved(op: str, size: int) -> int:
    return 2 * size if op == "push_pull" else size


def counts(text: str) -> list[int]:
    """An argparse type: a comma-separated list of positive integers ("1,2,4")."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers, e.g. 1,2,4")
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.0, help="per cell")
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--workers", type=counts, default="1,2,4")
    parser.add_argument("--servers", type=counts, default="1,2")
    parser.add_argument("--ops", default=",".join(OPS))
    parser.add_argument("--procs", type=counts, default="1",
                        help="zps-server --procs: processes per server (e.g. 1,2)")
    parser.add_argument("--own-tables", action="store_true",
                        help="each worker pushes a table of its own (spread over the "
                             "servers) instead of all pushing one")
    parser.add_argument("--inflight", type=counts, default="1",
                        help="calls each worker keeps in flight (wait=False handles), e.g. "
                             "1,16")
    parser.add_argument("--quick", action="store_true", help="1 worker, 1 server")
    parser.add_argument("--targets", action="store_true",
                        help="only the cells with targets (1 worker, 1 server), each measured "
                             "--repeat times alternating with its raw ceiling; medians")
    parser.add_argument("--repeat", type=int, default=5, help="with --targets")
    parser.add_argument("--out", default="bench/results/throughput.json")
    args = parser.parse_args()
    if args.targets:
        return run_targets(args)
    sizes = [s for s in args.sizes.split(",") if s]
    unknown = sorted(set(sizes) - set(SIZES)) + sorted(set(args.ops.split(",")) - set(OPS))
    if unknown:
        parser.error(f"unknown size or op {', '.join(unknown)}: sizes are "
                     f"{','.join(SIZES)}; ops are {','.join(OPS)}")
    worker_counts = [1] if args.quick else args.workers
    server_counts = [1] if args.quick else args.servers
    ops = args.ops.split(",")
    rows: list[dict[str, Any]] = []
    raw: dict[tuple[str, int], float] = {}
    for label in sizes:
        for w in worker_counts:
            raw[(label, w)] = raw_echo(SIZES[label], w, args.seconds)
            print(f"raw echo {label:>6} x{w}: {raw[(label, w)]:9.1f} rt/s", flush=True)
    out_dir = Path(args.out).parent
    for n_servers, procs in [(n, p) for n in server_counts for p in args.procs]:
        with LocalCluster(out_dir / f"cluster{n_servers}-{procs}") as cluster:
            cluster.start_servers(n_servers, ["--mode", "async", "--log-level", "warning",
                                              "--procs", str(procs)])
            for label in sizes:
                size = SIZES[label]
                for w, op, inflight in [(w, o, k) for w in worker_counts for o in ops
                                        for k in args.inflight]:
                    rate = zps_rate(cluster.addresses, op, size, w, args.seconds,
                                    args.own_tables, inflight)
                    ceiling = raw[(label, w)]
                    row = {
                        "size": label, "bytes": size, "op": op, "workers": w,
                        "servers": n_servers, "procs": procs, "inflight": inflight,
                        "ops_per_s": rate,
                        "gb_per_s": rate * moved(op, size) / 1e9,
                        "raw_rt_per_s": ceiling,
                        "raw_gb_per_s": ceiling * 2 * size / 1e9,
                        "ratio_to_raw": rate / ceiling,
                    }
                    rows.append(row)
                    print(f"zps {op:>9} {label:>6} workers={w} inflight={inflight} "
                          f"servers={n_servers}x{procs}: "
                          f"{rate:9.1f} ops/s {row['gb_per_s']:6.2f} GB/s "
                          f"({row['ratio_to_raw']:.2f}x raw)", flush=True)
    print_table(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "machine": {"python": platform.python_version(), "cpus": mp.cpu_count(),
                    "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version()},
        "seconds_per_cell": args.seconds, "rows": rows,
    }, indent=1))
    print(f"\nwrote {args.out}")
    return 0


# (op, size, target ratio to the raw echo) from the issue that set them.
TARGETS = (("push", "4KiB", 0.6), ("push_pull", "16MiB", 0.9), ("push_pull", "64MiB", 1.5))


def run_targets(args: argparse.Namespace) -> int:
    """Each target cell ``--repeat`` times, alternating with its raw ceiling; medians."""
    rows = []
    out_dir = Path(args.out).parent
    with LocalCluster(out_dir / "cluster-targets") as cluster:
        cluster.start_servers(1, ["--mode", "async", "--log-level", "warning"])
        for op, label, target in TARGETS:
            size = SIZES[label]
            zps_rates, raw_rates = [], []
            for _ in range(args.repeat):
                raw_rates.append(raw_echo(size, 1, args.seconds))
                zps_rates.append(zps_rate(cluster.addresses, op, size, 1, args.seconds))
            ratios = sorted(z / r for z, r in zip(zps_rates, raw_rates, strict=True))
            row = {"op": op, "size": label, "target": target,
                   "zps_ops_per_s": statistics.median(zps_rates),
                   "raw_rt_per_s": statistics.median(raw_rates),
                   "ratio_median": statistics.median(ratios),
                   "ratio_min": ratios[0], "ratio_max": ratios[-1], "repeat": args.repeat}
            rows.append(row)
            print(f"{op:>9} {label:>6}: zps {row['zps_ops_per_s']:8.1f} ops/s, raw "
                  f"{row['raw_rt_per_s']:8.1f} rt/s, x raw median {row['ratio_median']:.2f} "
                  f"(min {row['ratio_min']:.2f}, max {row['ratio_max']:.2f}; target "
                  f"{target})", flush=True)
    path = out_dir / "throughput-targets.json"
    path.write_text(json.dumps({"seconds_per_cell": args.seconds, "rows": rows}, indent=1))
    print(f"\nwrote {path}")
    return 0


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'op':>9} {'size':>6} {'wk':>3} {'fly':>3} {'srv':>5} {'ops/s':>9} {'GB/s':>6} "
          f"{'raw rt/s':>9} {'raw GB/s':>8} {'x raw':>6}")
    for r in rows:
        print(f"{r['op']:>9} {r['size']:>6} {r['workers']:>3} {r.get('inflight', 1):>3} "
              f"{str(r['servers']) + 'x' + str(r['procs']):>5} "
              f"{r['ops_per_s']:9.1f} {r['gb_per_s']:6.2f} {r['raw_rt_per_s']:9.1f} "
              f"{r['raw_gb_per_s']:8.2f} {r['ratio_to_raw']:6.2f}")


if __name__ == "__main__":
    sys.exit(main())
