"""``zps-worker``: connect to the servers and run a training job on this worker's shard."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from types import FrameType
from typing import Any

from zps.cli.launchers import from_launcher
from zps.cli.logs import FORMATS, setup_logging
from zps.cli.options import (
    Option,
    UsageError,
    checked,
    non_negative_float,
    parse,
    positive_float,
    positive_int,
    run_cli,
)
from zps.client import Client
from zps.codecs import make_codec
from zps.config import ClientConfig
from zps.devices import DEVICES
from zps.errors import ConfigError, ZpsError
from zps.exposition import MetricsEndpoint, client_families, parse_bind
from zps.jobs import JobContext, resolve_job
from zps.jobs.progress import say
from zps.store import parse_optimizer


def _rank(text: str) -> str:
    if text != "auto" and not (text.isdigit() and int(text) >= 0):
        raise ValueError("must be auto or an integer >= 0")
    return text


OPTIONS = (
    Option("servers", str, "tcp://127.0.0.1:5570",
           "comma-separated server endpoints, the same list and order on every worker"),
    Option("job", str, "digits-mlp",
           "digits-mlp, digits-softmax, ctr, torch-digits, torch-ctr, or "
           "package.module:function"),
    Option("worker-index", checked(_rank), "auto",
           "this worker's shard index, 0..num-workers-1, or auto: the first server assigns "
           "one at registration (the same again for a --client-id that comes back)"),
    Option("num-workers", positive_int, None,
           "how many workers share the training data (default: the servers' --workers)"),
    Option("epochs", positive_int, None,
           "passes over this worker's shard (default: 30 for digits, 2 for ctr and torch-ctr, "
           "14 for torch-digits)"),
    Option("batch-size", positive_int, None,
           "examples per step (default: 32; ctr 4096, torch-digits 16, torch-ctr 1024)"),
    Option("lr", positive_float, None,
           "learning rate of the built-in jobs (default: 0.5; ctr: FTRL's 0.1; "
           "torch-digits: Adadelta's 1.0; torch-ctr: 0.05)"),
    Option("device", str, "auto", "where the built-in digits models run: auto (CUDA when "
           "CuPy sees a GPU, else NumPy), cpu, or cuda", choices=DEVICES),
    Option("seed", int, 0, "seed for data split and initial parameters (same on all workers)"),
    Option("slow", non_negative_float, 0.0,
           "extra seconds per step, to play a straggler in demos and benchmarks"),
    Option("server-optimizer", checked(parse_optimizer), "",
           "push gradients and let the server step: sgd:LR[:MOMENTUM] or adam:LR "
           "(default: push -lr * gradient)"),
    Option("eval-every", int, 0, "record the test accuracy every N steps (0: only at the end)"),
    Option("timeout", positive_float, 30.0, "seconds before a request is retried"),
    Option("retries", int, 2, "retries of a timed-out request"),
    Option("connect-timeout", positive_float, 10.0, "seconds to wait for each server's hello"),
    Option("chunk-bytes", positive_int, 4 << 20, "tables above this travel as row chunks"),
    Option("standbys", str, "",
           "hot standbys, one per server in the same order (comma-separated; leave an entry "
           "empty for a server without one): the worker switches when one takes over"),
    Option("codec", checked(make_codec), "none",
           "how pushes travel: none, fp16, int8[:BLOCK], sign[:BLOCK] or topk[:RATIO]"),
    Option("no-error-feedback", bool, False,
           "lossy codecs: drop what compression lost instead of adding it to the next push"),
    Option("pull-codec", checked(lambda s: make_codec(s) if s else None), "",
           "delta pulls: fetch only the change since the version held, sent with this codec "
           "(none = exact; default: pull whole tables)"),
    Option("full-pull-every", positive_int, 20,
           "lossy pull codecs: every Nth pull fetches whole tables (resets the error)"),
    Option("heartbeat-interval", non_negative_float, 1.0, "seconds between heartbeats"),
    Option("client-id", str, "", "stable worker id (default: random)"),
    Option("quiet", bool, False, "no progress bar"),
    Option("print-config", bool, False,
           "print every setting with where it came from (flag, ZPS_* variable, config file, "
           "launcher, default) and exit", flag_only=True),
    Option("metrics-bind", checked(parse_bind), "",
           "serve this worker's Prometheus /metrics on HOST:PORT (calls, latency, retries, "
           "failovers)"),
    Option("metrics-out", str, "", "write the job's result (losses, accuracy) to this JSON file"),
    Option("log-level", str, "warning", "logging level",
           choices=("debug", "info", "warning", "error")),
    Option("log-format", str, "text", "text lines, or one JSON object a line (for log "
           "collectors; progress then goes to the log too)", choices=FORMATS),
    Option("curve-server-key", str, "",
           "with CURVE: the servers' public key file (server.key from `zps keygen`)"),
    Option("curve-key", str, "",
           "with CURVE: this worker's key pair file (worker.key_secret)"),
)


def job_defaults(job: str) -> dict[str, Any]:
    """Epochs, batch size and learning rate a built-in job trains with unless told."""
    if job == "ctr":
        return {"epochs": 2, "batch_size": 4096, "lr": 0.1}
    if job == "torch-digits":  # PyTorch's MNIST example: Adadelta at lr 1.0, 14 epochs
        return {"epochs": 14, "batch_size": 16, "lr": 1.0}
    if job == "torch-ctr":
        return {"epochs": 2, "batch_size": 1024, "lr": 0.05}
    return {"epochs": 30, "batch_size": 32, "lr": 0.5}


def load_config(
    argv: Sequence[str] | None, environ: Mapping[str, str]
) -> tuple[ClientConfig, JobContext, dict[str, Any]]:
    """Parse flags, environment and TOML into the client config and the job context."""
    sources: dict[str, str] = {}
    v = parse("zps-worker", "Run a zps training worker.", OPTIONS, argv, environ, sources)
    _apply_launcher(v, sources, environ)
    v["sources"] = sources
    rank = None if v["worker_index"] == "auto" else int(v["worker_index"])
    check_rank(rank, v["num_workers"])
    if v["retries"] < 0:
        raise UsageError("--retries must be >= 0")
    client = ClientConfig(
        timeout=v["timeout"],
        retries=v["retries"],
        connect_timeout=v["connect_timeout"],
        chunk_bytes=v["chunk_bytes"],
        codec=v["codec"],
        error_feedback=not v["no_error_feedback"],
        pull_codec=v["pull_codec"] or None,
        full_pull_every=v["full_pull_every"],
        heartbeat_interval=v["heartbeat_interval"],
        client_id=v["client_id"] or None,
        rank=rank,
        standbys=tuple(a.strip() for a in v["standbys"].split(",")) if v["standbys"] else (),
        curve_server_key=v["curve_server_key"] or None,
        curve_key=v["curve_key"] or None,
    )
    ctx = JobContext(
        slow=v["slow"],
        server_optimizer=parse_optimizer(v["server_optimizer"]),
        eval_every=max(0, v["eval_every"]),
        worker_index=rank or 0,  # auto, or the worker count from the servers: see joined()
        num_workers=v["num_workers"] or 1,
        **{key: v[key] if v[key] is not None else value
           for key, value in job_defaults(v["job"]).items()},
        seed=v["seed"],
        progress=not v["quiet"],
        device=v["device"],
    )
    return client, ctx, v


def check_rank(rank: int | None, num_workers: int | None) -> None:
    """A rank outside 0..num_workers-1 is a ``UsageError`` saying what to change."""
    if rank is not None and num_workers is not None and not 0 <= rank < num_workers:
        raise UsageError(f"--worker-index {rank} must be in 0..{num_workers - 1} (set "
                         "--num-workers to the number of workers, or --worker-index auto)")


def joined(ps: Client, ctx: JobContext, values: Mapping[str, Any]) -> JobContext:
    """The job context once connected: the rank the servers assigned (``auto``) and the
    worker count they were started for (unless given)."""
    rank = ps.rank if ps.rank is not None else ctx.worker_index
    count = values["num_workers"] or ps.num_workers
    if values["num_workers"] is None and rank >= count:
        raise UsageError(f"the servers assigned rank {rank}, but they were started for "
                         f"{count} workers (zps-server --workers); start at most {count} "
                         "workers, or give --num-workers")
    check_rank(rank, count)
    return replace(ctx, worker_index=rank, num_workers=count)


def _apply_launcher(values: dict[str, Any], sources: dict[str, str],
                    environ: Mapping[str, str]) -> None:
    """Fill what was not set explicitly from the launcher's variables (see launchers)."""
    launch = from_launcher(environ)
    if launch is None:
        return
    for key, value in (("worker_index", launch.worker_index),
                       ("num_workers", launch.num_workers), ("servers", launch.servers)):
        if value is not None and sources.get(key) == "default":
            values[key], sources[key] = value, launch.source


def print_config(values: Mapping[str, Any], ctx: JobContext) -> None:
    """Every setting, its value and where it came from (``--print-config``)."""
    sources = values["sources"]
    for key in sorted(sources):
        value, source = values[key], sources[key]
        if value is None and hasattr(ctx, key):  # epochs, batch size, lr: the job's own
            value, source = getattr(ctx, key), f"default of --job {values['job']}"
        print(f"{key.replace('_', '-')} = {value!r}  ({source})")


def _check_writable(path: str) -> None:
    try:
        with open(path, "a"):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write --metrics-out {path}: {exc.strerror}") from None


@contextlib.contextmanager
def _metrics(values: Mapping[str, Any], ps: Client) -> Iterator[None]:
    """``--metrics-bind``: serve the client's metrics while the job runs."""
    if not values["metrics_bind"]:
        yield
        return
    try:
        endpoint = MetricsEndpoint(values["metrics_bind"],
                                   lambda: client_families(ps.metrics(), ps.rank))
    except OSError as exc:
        raise UsageError(f"cannot serve metrics on {values['metrics_bind']} (--metrics-bind): "
                         f"{exc.strerror or exc}") from None
    logging.getLogger("zps.worker").info("metrics on http://%s/metrics", endpoint.address)
    try:
        yield
    finally:
        endpoint.close()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    def _main() -> int:
        config, ctx, values = load_config(argv, os.environ)
        if values["print_config"]:
            print_config(values, ctx)
            return 0
        setup_logging(str(values["log_level"]), str(values["log_format"]))
        signal.signal(signal.SIGTERM, _interrupt)  # leave cleanly: say bye, close sockets
        if values["metrics_out"]:
            _check_writable(values["metrics_out"])  # fail now, not after the training run
        try:
            job = resolve_job(values["job"])
            with Client(values["servers"], config) as ps, _metrics(values, ps):
                ctx = joined(ps, ctx, values)
                result = job(ps, ctx) or {}
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        except ZpsError as exc:
            print(f"zps-worker {ctx.worker_index}: {exc}", file=sys.stderr)
            return 1
        if values["metrics_out"]:
            with open(values["metrics_out"], "w") as handle:
                json.dump(result, handle)
        if "test_accuracy" in result:
            say(f"worker {ctx.worker_index}: test accuracy {result['test_accuracy']:.4f} "
                f"after {result.get('steps', '?')} steps ({result.get('seconds', 0):.1f} s)")
        return 0

    run_cli("zps-worker", _main)


if __name__ == "__main__":
    main()
