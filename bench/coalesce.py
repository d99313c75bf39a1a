"""Concurrent small calls to one server, coalesced into batches or sent one by one.

Each worker *process* runs an ``AsyncClient`` that starts ``K`` calls at once
(``asyncio.gather``), each on a 4 KiB table of its own, waits for all, and repeats, against
one ``zps-server`` (async mode). With ``coalesce=True`` (the default) the K requests leave
as one message and their replies come back as one; with ``coalesce=False`` each travels
alone. The ceiling, measured in the same run: the same K tables in *one* call (one request,
one reply), the most that joining them could give. Cells alternate, ``--repeat`` times;
medians. Prints a table, writes JSON.

    python bench/coalesce.py                       # 1 and 4 workers, K = 16
    python bench/coalesce.py --workers 1,2,4 --calls 4,16 --repeat 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zps
from bench.throughput import counts, run_timed
from zps.cli.cluster import LocalCluster
from zps.runtime import run

MODES = ("coalesced", "one by one", "one call (ceiling)")


def _worker(address: str, op: str, calls: int, mode: str, seconds: float, cell: int,
            index: int, start: Any, out: Any) -> None:
    names = [f"c{cell}-w{index}-t{i}" for i in range(calls)]  # new tables for each cell
    value = np.ones(1024, np.float32)

    async def main() -> None:
        async with zps.AsyncClient([address], heartbeat_interval=0,
                                   coalesce=mode == "coalesced") as ps:
            await ps.init({n: np.zeros_like(value) for n in names})

            async def one(name: str) -> Any:
                if op == "pull":
                    return await ps.pull([name])
                return await getattr(ps, op)({name: value})

            async def step() -> None:
                if mode == MODES[2]:
                    await (ps.pull(names) if op == "pull" else
                           getattr(ps, op)(dict.fromkeys(names, value)))
                else:
                    await asyncio.gather(*(one(n) for n in names))

            for _ in range(20):
                await step()
            start.wait()
            count, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                await step()
                count += calls
            out.put((count, time.perf_counter() - t0))

    run(main())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=counts, default="1,4")
    parser.add_argument("--calls", type=counts, default="16", help="calls started at once")
    parser.add_argument("--ops", default="push,push_pull")
    parser.add_argument("--seconds", type=float, default=1.5, help="per cell")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default="bench/results/coalesce.json")
    args = parser.parse_args()
    ops = [o for o in args.ops.split(",") if o]
    if not set(ops) <= {"push", "pull", "push_pull"}:
        parser.error(f"--ops {args.ops!r}: choose from push, pull, push_pull")
    rows: list[dict[str, Any]] = []
    cell = 0
    out_dir = Path(args.out).parent
    with LocalCluster(out_dir / "cluster-coalesce") as cluster:
        cluster.start_servers(1, ["--mode", "async", "--log-level", "warning"])
        address = cluster.addresses[0]
        for op, workers, calls in [(o, w, k) for o in ops for w in args.workers
                                   for k in args.calls]:
            rates: dict[str, list[float]] = {m: [] for m in MODES}
            for _ in range(args.repeat):
                for mode in MODES:
                    cell += 1
                    rates[mode].append(run_timed(
                        _worker, (address, op, calls, mode, args.seconds, cell), workers,
                        indexed=True))
            med = {m: statistics.median(r) for m, r in rates.items()}
            row = {"op": op, "workers": workers, "calls": calls, "repeat": args.repeat,
                   "tables_per_s": med, "all": rates,
                   "coalesced_over_one_by_one": med[MODES[0]] / med[MODES[1]],
                   "coalesced_over_ceiling": med[MODES[0]] / med[MODES[2]]}
            rows.append(row)
            print(f"{op:>9} workers={workers} calls={calls}: coalesced {med[MODES[0]]:8.0f}, "
                  f"one by one {med[MODES[1]]:8.0f}, one call {med[MODES[2]]:8.0f} tables/s",
                  flush=True)
    print(f"\n{'op':>9} {'wk':>3} {'K':>3} {'coalesced':>10} {'one by one':>11} "
          f"{'one call':>9} {'gain':>6} {'x ceiling':>9}")
    for r in rows:
        t = r["tables_per_s"]
        print(f"{r['op']:>9} {r['workers']:>3} {r['calls']:>3} {t[MODES[0]]:10.0f} "
              f"{t[MODES[1]]:11.0f} {t[MODES[2]]:9.0f} {r['coalesced_over_one_by_one']:6.2f} "
              f"{r['coalesced_over_ceiling']:9.2f}")
    out_dir.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "machine": {"python": platform.python_version(), "cpus": mp.cpu_count(),
                    "load": os.getloadavg()},
        "seconds_per_cell": args.seconds, "rows": rows}, indent=1))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
