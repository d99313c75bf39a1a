"""Built-in training jobs and the contract for users' own jobs.

A job is a function ``job(ps, ctx) -> dict``: ``ps`` is a connected ``zps.Client``, ``ctx``
the worker's ``JobContext``; the returned dict (losses, accuracy...) is the worker's result.
``zps-worker --job package.module:function`` runs such a function from the user's code.
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from zps.devices import array_module
from zps.errors import ConfigError
from zps.jobs.data import load_digits
from zps.jobs.models import MODELS, Model, accuracy
from zps.jobs.progress import progress_bar


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a worker knows about its share of the job."""

    worker_index: int = 0
    num_workers: int = 1
    epochs: int = 30
    batch_size: int = 32
    lr: float = 0.5
    seed: int = 0
    progress: bool = True
    slow: float = 0.0  # extra seconds per step (a simulated straggler)
    server_optimizer: dict[str, Any] | None = None  # push gradients, the server steps
    eval_every: int = 0  # record test accuracy every N steps
    device: str = "auto"  # where the model's math runs: auto (CUDA if there), cpu, cuda


Job = Callable[[Any, JobContext], dict[str, Any]]


def train_digits(ps: Any, ctx: JobContext, model: Model,
                 xp: ModuleType | None = None) -> dict[str, Any]:
    """Minibatch SGD on this worker's shard of digits; every step is one push_pull.

    Each worker runs the same number of steps per epoch (set by the largest shard), so in
    sync mode every round hears from every worker. Each push carries the batch's loss and
    size (for the ``loss`` rate rule and the ``weighted`` aggregation). With a server-side
    optimizer the worker pushes raw gradients; otherwise ``-lr * gradient``. Returns the
    losses, a timeline of test accuracy (with ``eval_every``) and the final accuracy.
    The math runs on ``xp`` (by default the array module of ``ctx.device``); the data
    goes to the device once, and only compressed pushes cross back to the host.
    """
    xp = xp or array_module(ctx.device)
    data = load_digits(seed=ctx.seed)
    host_x, host_y = data.shard(ctx.worker_index, ctx.num_workers)
    x, y = xp.asarray(host_x), xp.asarray(host_y)  # on the device once
    test_x, test_y = xp.asarray(data.x_test), xp.asarray(data.y_test)
    per_worker = math.ceil(len(data.x_train) / ctx.num_workers)
    steps_per_epoch = math.ceil(per_worker / ctx.batch_size)
    initial = model.init(x.shape[1], data.classes, ctx.seed)
    params = {k: xp.asarray(v) for k, v in ps.init(initial, optimizer=ctx.server_optimizer)
              .items()}
    server_steps = ctx.server_optimizer or getattr(ps, "server_info", {}).get("optimizer")
    scale = 1.0 if server_steps else -ctx.lr  # gradients for a server optimizer, else deltas
    rng = np.random.default_rng(ctx.seed + 1 + ctx.worker_index)
    losses: list[float] = []
    timeline: list[dict[str, float]] = []
    total = ctx.epochs * steps_per_epoch
    start = time.perf_counter()
    with progress_bar(ctx, total) as bar:
        for _ in range(ctx.epochs):
            order = rng.permutation(len(host_x))
            for step in range(steps_per_epoch):
                idx = xp.asarray(order[(np.arange(ctx.batch_size) + step * ctx.batch_size)
                                       % len(host_x)])
                loss, grads = model.loss_grad(xp, params, xp.take(x, idx, axis=0),
                                              xp.take(y, idx, axis=0))
                if ctx.slow:
                    time.sleep(ctx.slow)
                params = ps.push_pull({k: scale * g for k, g in grads.items()},
                                      loss=loss, weight=ctx.batch_size)
                losses.append(loss)
                bar.update(1)
                if ctx.eval_every and len(losses) % ctx.eval_every == 0:
                    timeline.append({
                        "seconds": time.perf_counter() - start, "step": len(losses),
                        "test_accuracy": accuracy(xp, model, params, test_x, test_y),
                    })
                if len(losses) % 10 == 0:
                    rate = len(losses) * ctx.batch_size / (time.perf_counter() - start)
                    bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}",
                                    samples_s=f"{rate:.0f}")
    seconds = time.perf_counter() - start
    params = ps.pull(device=xp)
    return {
        "worker": ctx.worker_index,
        "steps": len(losses),
        "losses": losses,
        "timeline": timeline,
        "seconds": seconds,
        "samples_per_s": len(losses) * ctx.batch_size / seconds,
        "test_accuracy": accuracy(xp, model, params, test_x, test_y),
        "train_accuracy": accuracy(xp, model, params, x, y),
        "device": getattr(xp, "__name__", str(xp)),
    }


def _digits_job(model_name: str) -> Job:
    return lambda ps, ctx: train_digits(ps, ctx, MODELS[model_name])


def _ctr_job(ps: Any, ctx: JobContext) -> dict[str, Any]:
    from zps.jobs.ctr import train_ctr

    return train_ctr(ps, ctx)


def _torch_job(module: str) -> Job:
    def job(ps: Any, ctx: JobContext) -> dict[str, Any]:
        try:
            jobs = importlib.import_module(f"zps.jobs.{module}")
        except ImportError as exc:
            if "torch" not in str(exc):
                raise
            raise ConfigError("the torch jobs need PyTorch: pip install 'zps[torch]'") from None
        return jobs.run(ps, ctx)  # type: ignore[no-any-return]
    return job


BUILTIN_JOBS: dict[str, Job] = {
    "digits-mlp": _digits_job("mlp"),
    "digits-softmax": _digits_job("softmax"),
    "ctr": _ctr_job,
    "torch-digits": _torch_job("torch_digits"),
    "torch-ctr": _torch_job("torch_ctr"),
}


def resolve_job(spec: str) -> Job:
    """A built-in job by name, or ``package.module:function`` from the user's code."""
    if spec in BUILTIN_JOBS:
        return BUILTIN_JOBS[spec]
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        known = ", ".join(BUILTIN_JOBS)
        raise ConfigError(f"unknown job {spec!r}: use one of {known} or package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import job module {module_name!r}: {exc}") from None
    job = getattr(module, attr, None)
    if not callable(job):
        raise ConfigError(f"{module_name!r} has no function {attr!r} to run as a job")
    return job  # type: ignore[no-any-return]
