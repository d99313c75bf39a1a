"""Training jobs for the PyTorch tests, run by real ``zps-worker`` processes
(``--job tests.torch_jobs:NAME``)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import torch

import zps.torch as zt

STEPS = 50
BATCH = 64  # the whole batch; each of W workers takes its 1/W


def small_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def batches(seed: int = 1, steps: int = STEPS) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(steps, BATCH, 8, generator=g), torch.randint(0, 3, (steps, BATCH),
                                                                   generator=g)


def local_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)


def halves(ps: Any, ctx: Any) -> dict[str, Any]:
    """Each worker trains on its share of every batch; returns the final parameters."""
    torch.set_num_threads(1)
    model = small_model()
    with torch.no_grad():  # every worker starts elsewhere: broadcast must fix that
        for p in model.parameters():
            p.add_(ctx.worker_index)
    opt = zt.DistributedOptimizer(local_optimizer(model, ctx.lr), ps,
                                  named_parameters=model.named_parameters(),
                                  server_optimizer=ctx.server_optimizer, bucket_bytes=256)
    zt.broadcast_parameters(ps, model)  # the first worker's values win, whichever it is
    start = {n: p.detach().tolist() for n, p in model.named_parameters()}
    xs, ys = batches()
    share = BATCH // ctx.num_workers
    part = slice(ctx.worker_index * share, (ctx.worker_index + 1) * share)
    for step in range(STEPS):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xs[step][part]), ys[step][part])
        loss.backward()
        if ctx.slow:
            time.sleep(ctx.slow)  # a straggler: the slowness is what is under test
        opt.step()
    return {"params": {n: p.detach().tolist() for n, p in model.named_parameters()},
            "start": start, "steps": STEPS}


def long_run(ps: Any, ctx: Any) -> dict[str, Any]:
    """Many steps of a larger model, for faults during backward (a worker killed, a
    primary killed); worker 0 of ``ZPS_TEST_SUICIDE`` kills itself halfway."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 10))
    opt = zt.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.01), ps,
                                  named_parameters=model.named_parameters(),
                                  bucket_bytes=64 << 10)
    zt.broadcast_parameters(ps, model)
    g = torch.Generator().manual_seed(ctx.worker_index)
    x, y = torch.randn(32, 64, generator=g), torch.randint(0, 10, (32,), generator=g)
    steps = ctx.epochs
    for step in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if ctx.slow and ctx.worker_index == 1:
            time.sleep(ctx.slow)  # a straggler: the slowness is what is under test
        if step == steps // 2 and ctx.worker_index == 0 and os.environ.get(
                "ZPS_TEST_SUICIDE"):
            os.kill(os.getpid(), signal.SIGKILL)
    return {"steps": steps, "loss": float(torch.nn.functional.cross_entropy(model(x), y))}
