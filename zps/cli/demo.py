"""``make demo``: a local cluster trains the digits MLP; prints accuracy, plots the loss.

Starts the servers and workers as real processes on loopback, shows each worker's
progress bar, then reports the held-out test accuracy and writes a loss-curve PNG.
Exits 0 when the accuracy reaches the bar (0.95), 1 otherwise; no process is left behind.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from zps.cli.cluster import LocalCluster
from zps.errors import ZpsError

ACCURACY_BAR = 0.95
CTR_GAP = 0.03  # the ctr job passes within this much of the generating model's AUC


def _finish(fig: Any, ax: Any, path: Path, title: str, xlabel: str, ylabel: str) -> None:
    """Label, save and close a plot."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_losses(results: list[dict[str, Any]], path: Path, title: str) -> None:
    """Write a PNG of each worker's training loss (smoothed) against its step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for result in results:
        losses = np.asarray(result["losses"])
        window = max(1, len(losses) // 50)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(len(smooth)) + window, smooth, label=f"worker {result['worker']}")
    ax.set_yscale("log")
    _finish(fig, ax, path, title, "step (one push_pull)", "training loss (cross-entropy)")


CTR_JOBS = ("ctr", "torch-ctr")
EPOCHS = {"ctr": 2, "torch-ctr": 2, "torch-digits": 14}  # default: 100 (digits)


def total_rounds(workers: int, epochs: int, job: str = "digits-mlp") -> int:
    """Rounds the built-in jobs run (every worker runs as many steps as the largest shard)."""
    if job in CTR_JOBS:
        from zps.jobs.ctrdata import TRAIN

        examples, batch_size = TRAIN, 4096 if job == "ctr" else 1024
        return epochs * math.ceil(math.ceil(examples / workers) / batch_size)
    from zps.jobs.data import load_digits

    examples = len(load_digits().x_train)
    if job == "torch-digits":  # equal shares, batches of 16
        return epochs * math.ceil(examples // workers / 16)
    return epochs * math.ceil(math.ceil(examples / workers) / 32)


def plot_auc(results: list[dict[str, Any]], path: Path, title: str, best: float) -> None:
    """Write a PNG of each worker's test AUC against wall time, and the best achievable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for result in results:
        points = result["timeline"]
        ax.plot([p["seconds"] for p in points], [p["test_auc"] for p in points],
                marker=".", label=f"worker {result['worker']}")
    ax.axhline(best, color="gray", linestyle="--", label="generating model")
    _finish(fig, ax, path, title, "seconds", "test AUC")


def report_ctr(results: list[dict[str, Any]], out: Path, title: str, seconds: float) -> int:
    """Print the ctr job's test AUC against the generating model's; exit status."""
    got = float(np.mean([r["test_auc"] for r in results]))
    best = float(results[0]["best_auc"])
    loss = float(np.mean([r["test_log_loss"] for r in results]))
    plot = out / "auc.png"
    plot_auc(results, plot, title, best)
    print(f"\nfinal test AUC: {got:.4f} (the generating model: {best:.4f}; log loss {loss:.4f}; "
          f"{results[0]['steps']} steps per worker, {seconds:.1f} s in all)")
    print(f"AUC curve: {plot}")
    if got < best - CTR_GAP:
        print(f"zps-demo: AUC {got:.4f} is more than {CTR_GAP} below the generating model's",
              file=sys.stderr)
        return 1
    return 0


def kill_halfway(cluster: LocalCluster, out: Path, rounds: int) -> None:
    """SIGKILL the first primary once half of the rounds are applied, and say so."""
    from zps.client import Client

    with Client([cluster.addresses[0]], role="observer", heartbeat_interval=0) as probe:
        tick = threading.Event()
        while not any(w.poll() is not None for w in cluster.workers):
            tables = probe.stats()[0]["tables"]
            if tables and max(t["rounds"] for t in tables) >= rounds // 2:
                break
            tick.wait(0.05)
    cluster.kill_server(0)
    print(f"\n*** killed the primary {cluster.addresses[0]} (SIGKILL) halfway through "
          f"training; its standby {cluster.standby_addresses[0]} takes over ***\n", flush=True)
    log = out / "standby0.log"
    lines = [line for line in log.read_text().splitlines() if "promoted" in line]
    for line in lines:
        print(f"standby0: {line}", flush=True)


PASSED_ON = ("--server-args", "--worker-args")  # values that are flags of other programs


def joined_values(argv: list[str]) -> list[str]:
    """``--worker-args --no-error-feedback`` as ``--worker-args=--no-error-feedback``:
    argparse would take a value starting with '-' for a flag of its own."""
    out: list[str] = []
    rest = iter(argv)
    for arg in rest:
        if arg in PASSED_ON:
            value = next(rest, None)
            out.append(arg if value is None else f"{arg}={value}")
        else:
            out.append(arg)
    return out


def server_flags(args: argparse.Namespace) -> list[str]:
    """The flags every server of the demo gets. In async and SSP modes each push is applied
    alone, so it is scaled by 1/workers (as the sync mean does) unless --server-args says
    otherwise: otherwise every worker moves the model by a whole step."""
    extra = args.server_args.split()
    flags = ["--mode", args.mode, "--workers", str(args.workers)]
    if not args.mode.startswith("sync") and "--lr-scale" not in extra:
        flags += ["--lr-scale", f"{1 / args.workers:g}"]
    return [*flags, *extra]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zps-demo", description=__doc__)
    parser.add_argument("--servers", type=int, default=2, help="server processes")
    parser.add_argument("--workers", type=int, default=4, help="worker processes")
    parser.add_argument("--mode", default="sync", help="sync, async or ssp:K")
    parser.add_argument("--server-args", default="",
                        help="more zps-server flags, e.g. '--quorum 3 --aggregate median'")
    parser.add_argument("--worker-args", default="",
                        help="more zps-worker flags, e.g. '--codec int8 --pull-codec int8'")
    parser.add_argument("--slow", type=float, default=0.0,
                        help="make worker 0 a straggler: extra seconds per step")
    parser.add_argument("--job", default="digits-mlp")
    parser.add_argument("--epochs", type=int, default=None,
                        help="passes over each worker's shard (100 for digits, 14 for "
                             "torch-digits, 2 for ctr and torch-ctr)")
    parser.add_argument("--out", default="out/demo", help="folder for logs, results, plot")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--no-standby", action="store_true",
                        help="run the servers without hot standbys")
    parser.add_argument("--failover", action="store_true",
                        help="SIGKILL the first primary halfway through training: its standby "
                             "takes over and the workers carry on")
    args = parser.parse_args(joined_values(sys.argv[1:] if argv is None else argv))
    if args.epochs is None:
        args.epochs = EPOCHS.get(args.job, 100)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"zps-demo: error: cannot create --out {out}: {exc.strerror}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    print(f"zps demo: {args.servers} servers, {args.workers} workers, mode {args.mode}, "
          f"job {args.job}; logs in {out}/", flush=True)
    with LocalCluster(out) as cluster:
        try:
            cluster.start_servers(args.servers, server_flags(args))
        except ZpsError as exc:
            print(f"zps-demo: error: {exc}", file=sys.stderr)
            return 1
        print("servers listening on " + ", ".join(cluster.addresses), flush=True)
        if args.failover and args.no_standby:
            print("zps-demo: error: --failover needs the standbys (drop --no-standby)",
                  file=sys.stderr)
            return 2
        if not args.no_standby:
            try:
                cluster.start_standbys(server_flags(args))
            except ZpsError as exc:
                print(f"zps-demo: error: {exc}", file=sys.stderr)
                return 1
            print("hot standbys on " + ", ".join(cluster.standby_addresses), flush=True)
        for index in range(args.workers):
            extra = ["--quiet"] if args.quiet else []
            if args.job in CTR_JOBS:  # an AUC timeline (torch-ctr's forward costs more)
                extra += ["--eval-every", "10" if args.job == "ctr" else "50"]
            if index == 0 and args.slow:
                extra += ["--slow", str(args.slow)]
            cluster.start_worker([
                "--job", args.job, "--worker-index", str(index),
                "--num-workers", str(args.workers), "--epochs", str(args.epochs),
                "--metrics-out", str(out / f"worker{index}.json"), *extra,
                *args.worker_args.split(),
            ])
        if args.failover:
            kill_halfway(cluster, out, total_rounds(args.workers, args.epochs, args.job))
        codes = cluster.wait_workers(timeout=600)
    if any(codes):
        print(f"zps-demo: error: worker exit codes {codes}; see {out}/server*.log",
              file=sys.stderr)
        return 1
    if args.failover:
        promoted = [line for line in (out / "standby0.log").read_text().splitlines()
                    if "promoted" in line]
        print("standby0 log: " + (promoted[0] if promoted else "no takeover logged"))
    results = [json.loads((out / f"worker{i}.json").read_text()) for i in range(args.workers)]
    title = f"zps demo: {args.job}, {args.workers} workers, {args.mode}"
    if args.job in CTR_JOBS:
        return report_ctr(results, out, title, time.perf_counter() - start)
    acc = float(np.mean([r["test_accuracy"] for r in results]))
    plot = out / "loss.png"
    plot_losses(results, plot, title)
    steps = results[0]["steps"]
    print(f"\nfinal test accuracy: {acc:.4f} (held-out split, {steps} steps per worker, "
          f"{time.perf_counter() - start:.1f} s in all)")
    print(f"loss curve: {plot}")
    if acc < ACCURACY_BAR:
        print(f"zps-demo: accuracy {acc:.4f} is below the bar of {ACCURACY_BAR}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
