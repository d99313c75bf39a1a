"""Row tables: pull_rows and push_rows throughput, against the ceilings measured in the
same run.

For each row dim, server count and worker count, worker *processes* pull (or push) the rows
of a batch of 100k ids with Zipf skew (about 25-30k distinct: the client sends each once)
back to back for ``--seconds`` against ``zps-server`` processes (async mode). In the same
run, the ceilings: a dense ``pull`` of a tensor of the same bytes as the distinct rows,
with the same workers and servers; an in-process NumPy gather of those rows; and the
server's own id lookup and read (index + gather, no sockets). After the pushes, the bytes a
server holds per stored row, against the row's payload. Prints tables, writes JSON.

    python bench/sparse.py             # dims 16 and 64, 1 and 2 servers, 1 and 4 workers
    python bench/sparse.py --quick     # one cell of each
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zps
from bench.throughput import counts, run_timed, timed_loop
from zps.cli.cluster import LocalCluster
from zps.store.idindex import IdIndex, mix64
from zps.store.rows import RowTable, parse_row_spec

BATCH = 100_000
ZIPF = 1.05
TARGETS = {"pull_rows_vs_dense": 0.5, "lookup_ids_per_s": 10e6, "bytes_per_row_ratio": 1.5}


def zipf_batch(seed: int) -> np.ndarray:
    """100k ids with Zipf popularity, spread over the int64 space."""
    ranks = np.random.default_rng(seed).zipf(ZIPF, BATCH).astype(np.int64)
    return mix64(ranks).view(np.int64)


def _rows_client(servers: list[str], op: str, dim: int, seconds: float, start: Any,
                 out: Any) -> None:
    ids = zipf_batch(0)  # the same rows in every process: pulls read stored rows
    if op == "pull_distinct":  # the same rows, each asked once, in order
        ids, op = np.unique(ids), "pull_rows"
    name = f"r{dim}"
    with zps.Client(servers, heartbeat_interval=0) as ps:
        ps.init_rows(name, dim=dim, init="normal:0.01")
        updates = np.ones((ids.size, dim), np.float32)
        call = {"pull_rows": lambda: ps.pull_rows(name, ids),
                "push_rows": lambda: ps.push_rows(name, ids, updates)}[op]
        timed_loop(call, seconds, start, out)


def _dense_client(servers: list[str], nbytes: int, seconds: float, start: Any,
                  out: Any) -> None:
    name = f"d{nbytes}"
    with zps.Client(servers, heartbeat_interval=0) as ps:
        ps.init({name: np.zeros(nbytes // 4, np.float32)})
        timed_loop(lambda: ps.pull([name]), seconds, start, out)


def in_process(dim: int, unique: np.ndarray, repeat: int = 5) -> dict[str, float]:
    """The ceilings without sockets: a NumPy gather of the rows, the id index lookup, and a
    row table's read (lookup + gather) on a table holding the rows."""
    rng = np.random.default_rng(0)
    values = rng.standard_normal((unique.size * 4, dim)).astype(np.float32)
    slots = rng.permutation(values.shape[0])[:unique.size]
    table = RowTable("bench", parse_row_spec({"dim": dim}))
    table.apply(unique, np.ones((unique.size, dim), np.float32), 1.0, now=0.0)
    index = IdIndex()
    index.insert(unique, np.arange(unique.size, dtype=np.int64))

    def best(fn: Any) -> float:
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    gather = best(lambda: values[slots])
    lookup = best(lambda: index.lookup(unique))
    read = best(lambda: table.read(unique))
    return {"gather_gb_s": unique.size * dim * 4 / gather / 1e9,
            "lookup_ids_per_s": unique.size / lookup,
            "read_gb_s": unique.size * dim * 4 / read / 1e9}


def stored_bytes(servers: list[str], dim: int) -> tuple[int, int]:
    with zps.Client(servers, role="observer", heartbeat_interval=0) as ps:
        tables = [t for s in ps.stats() for t in s["tables"] if t["name"] == f"r{dim}"]
    return sum(t["rows"] for t in tables), sum(t["bytes"] for t in tables)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--dims", type=counts, default="16,64")
    parser.add_argument("--servers", type=counts, default="1,2")
    parser.add_argument("--workers", type=counts, default="1,4")
    parser.add_argument("--quick", action="store_true", help="dim 16, 1 server, 1 worker")
    parser.add_argument("--out", default="bench/results/sparse.json")
    args = parser.parse_args()
    dims = [16] if args.quick else args.dims
    server_counts = [1] if args.quick else args.servers
    worker_counts = [1] if args.quick else args.workers
    unique = np.unique(zipf_batch(0))
    print(f"batches of {BATCH} ids, {unique.size} distinct (Zipf {ZIPF})\n")
    rows: list[dict[str, Any]] = []
    memory: list[dict[str, Any]] = []
    started = time.perf_counter()
    for dim in dims:
        ceiling = in_process(dim, unique)
        row_bytes = unique.size * dim * 4
        for n_servers in server_counts:
            with LocalCluster(Path(args.out).parent / f"sparse{n_servers}") as cluster:
                cluster.start_servers(n_servers, ["--mode", "async", "--log-level", "warning"])
                addresses = cluster.addresses
                for workers in worker_counts:
                    dense = run_timed(_dense_client, (addresses, row_bytes, args.seconds),
                                      workers)
                    for op in ("push_rows", "pull_distinct", "pull_rows"):  # (stored rows)
                        rate = run_timed(_rows_client, (addresses, op, dim, args.seconds),
                                         workers)
                        ids_per_call = unique.size if op == "pull_distinct" else BATCH
                        rows.append({
                            "op": op, "dim": dim, "servers": n_servers, "workers": workers,
                            "calls_per_s": rate, "ids_per_s": rate * ids_per_call,
                            "distinct_rows_per_s": rate * unique.size,
                            "gb_s": rate * row_bytes / 1e9, "dense_pull_gb_s":
                            dense * row_bytes / 1e9, "x_dense": rate / dense, **ceiling})
                        r = rows[-1]
                        print(f"{op:>13} dim {dim:>2} servers {n_servers} workers {workers}: "
                              f"{r['ids_per_s'] / 1e6:6.2f}M ids/s, {r['gb_s']:5.2f} GB/s "
                              f"(dense pull {r['dense_pull_gb_s']:5.2f} GB/s, "
                              f"x {r['x_dense']:.2f}; in-process gather "
                              f"{ceiling['gather_gb_s']:.1f} GB/s)", flush=True)
                stored, held = stored_bytes(addresses, dim)
                memory.append({"dim": dim, "servers": n_servers, "rows": stored,
                               "bytes": held, "bytes_per_row": held / max(stored, 1),
                               "ratio": held / max(stored, 1) / (dim * 4)})
    print("\nin process (no sockets), per dim: "
          + "; ".join(f"dim {r['dim']}: lookup {r['lookup_ids_per_s'] / 1e6:.1f}M ids/s, "
                      f"table read {r['read_gb_s']:.2f} GB/s, gather {r['gather_gb_s']:.2f} GB/s"
                      for r in rows if r["servers"] == server_counts[0]
                      and r["workers"] == worker_counts[0] and r["op"] == "pull_distinct"))
    for m in memory:
        print(f"memory, dim {m['dim']}, {m['servers']} server(s): {m['rows']} rows, "
              f"{m['bytes_per_row']:.0f} bytes per row = {m['ratio']:.2f}x the payload")
    pulls = [r for r in rows if r["op"] == "pull_distinct"]
    targets = {
        "pull_rows of distinct ids x dense pull (median)": (
            statistics.median(r["x_dense"] for r in pulls),
                                            TARGETS["pull_rows_vs_dense"]),
        "lookup ids/s (slowest dim)": (min(r["lookup_ids_per_s"] for r in rows),
                                       TARGETS["lookup_ids_per_s"]),
    }
    print()
    for key, (got, goal) in targets.items():
        print(f"target {key}: {got:.3g} (goal >= {goal:g}) -> {'met' if got >= goal else 'missed'}")
    for m in memory:
        met = m["ratio"] <= TARGETS["bytes_per_row_ratio"]
        print(f"target bytes per row <= 1.5x payload, dim {m['dim']}: {m['ratio']:.2f} -> "
              f"{'met' if met else 'missed'}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "machine": platform.platform(), "seconds": time.perf_counter() - started,
        "distinct": int(unique.size), "rows": rows, "memory": memory}, indent=1))
    print(f"\nwrote {args.out} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
