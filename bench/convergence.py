"""Convergence of the digits MLP under each consistency mode, with one slow worker.

Four worker processes train against one server; worker 0 is a straggler (``--slow``).
Modes: sync, sync with quorum 3 (backup workers), async and ssp:2 (async and SSP scale each
update by 1/N, like the sync mean). Every worker records its test accuracy every few steps.
The run prints a table (time and updates to reach the target accuracy, final accuracy),
writes JSON and a PNG of test accuracy against wall time and against server updates.

    python bench/convergence.py [--epochs 40] [--slow 0.01]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zps.cli.cluster import LocalCluster

TARGET = 0.95


def modes(workers: int) -> dict[str, list[str]]:
    scale = str(1 / workers)
    return {
        "sync": ["--mode", "sync"],
        "sync quorum 3": ["--mode", "sync", "--quorum", "3"],
        "async": ["--mode", "async", "--lr-scale", scale],
        "ssp:2": ["--mode", "ssp:2", "--lr-scale", scale],
    }


def run_mode(name: str, server_args: list[str], args: argparse.Namespace,
             out: Path) -> dict[str, Any]:
    folder = out / name.replace(" ", "-").replace(":", "")
    with LocalCluster(folder) as cluster:
        cluster.start_servers(1, [*server_args, "--workers", str(args.workers),
                                  "--log-level", "warning"])
        for index in range(args.workers):
            cluster.start_worker([
                "--num-workers", str(args.workers), "--worker-index", str(index),
                "--epochs", str(args.epochs), "--eval-every", str(args.eval_every), "--quiet",
                "--metrics-out", str(folder / f"worker{index}.json"),
                *(["--slow", str(args.slow)] if index == 0 else []),
            ])
        codes = cluster.wait_workers(timeout=900)
    if any(codes):
        raise SystemExit(f"{name}: workers exited with {codes}; see {folder}")
    results = [json.loads((folder / f"worker{i}.json").read_text())
               for i in range(args.workers)]
    # One timeline per mode: every worker's evaluations in time order; "updates" is the
    # pushes made by all workers by then, as far as their last evaluations tell.
    points = sorted(
        (p["seconds"], p["step"], p["test_accuracy"], r["worker"])
        for r in results for p in r["timeline"]
    )
    steps_done = {r["worker"]: 0 for r in results}
    timeline = []
    for seconds, step, acc, worker in points:
        steps_done[worker] = step
        timeline.append({"seconds": seconds, "updates": sum(steps_done.values()),
                         "test_accuracy": acc, "worker": worker})
    reached = next((p for p in timeline if p["test_accuracy"] >= TARGET), None)
    return {
        "mode": name,
        "timeline": timeline,
        "seconds_to_target": reached["seconds"] if reached else None,
        "updates_to_target": reached["updates"] if reached else None,
        "final_accuracy": min(r["test_accuracy"] for r in results),
        "wall_seconds": max(r["seconds"] for r in results),
        "steps": {r["worker"]: r["steps"] for r in results},
    }


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=110, sharey=True)
    for row in rows:
        t = row["timeline"]
        axes[0].plot([p["seconds"] for p in t], [p["test_accuracy"] for p in t],
                     label=row["mode"], alpha=0.85)
        axes[1].plot([p["updates"] for p in t], [p["test_accuracy"] for p in t],
                     label=row["mode"], alpha=0.85)
    for ax, xlabel in zip(axes, ("wall time (s)", "pushes by all workers"), strict=True):
        ax.axhline(TARGET, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    axes[0].set_ylim(0.5, 1.0)
    axes[1].legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--slow", type=float, default=0.01, help="worker 0's extra s/step")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--out", default="bench/results/convergence")
    args = parser.parse_args()
    out = Path(args.out)
    rows = []
    for name, server_args in modes(args.workers).items():
        row = run_mode(name, server_args, args, out)
        rows.append(row)
        reach = (f"{row['seconds_to_target']:.2f} s / {row['updates_to_target']} updates"
                 if row["seconds_to_target"] is not None else "never")
        print(f"{name:>14}: {TARGET} reached after {reach}; final accuracy "
              f"{row['final_accuracy']:.4f}; wall {row['wall_seconds']:.1f} s", flush=True)
    print(f"\n{'mode':>14} {'s to ' + str(TARGET):>9} {'updates':>8} {'final acc':>9} "
          f"{'wall s':>7}")
    for r in rows:
        secs = f"{r['seconds_to_target']:.2f}" if r["seconds_to_target"] is not None else "-"
        ups = str(r["updates_to_target"]) if r["updates_to_target"] is not None else "-"
        print(f"{r['mode']:>14} {secs:>9} {ups:>8} {r['final_accuracy']:9.4f} "
              f"{r['wall_seconds']:7.1f}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "convergence.json").write_text(json.dumps({"args": vars(args), "rows": rows}))
    plot(rows, out / "convergence.png",
         f"digits MLP, {args.workers} workers, worker 0 slowed by {args.slow * 1000:g} ms/step")
    print(f"\nwrote {out}/convergence.json and {out}/convergence.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
