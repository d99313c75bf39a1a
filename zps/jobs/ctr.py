"""``zps-worker --job ctr``: logistic click-through prediction on row tables.

One row table per categorical field (26, a weight per id, server-side FTRL-Proximal with
L2, the classic optimizer of sparse logistic models: pushes are gradients) and a dense table
for the 13 dense features and the bias (server-side Adam).
Each step pushes the batch's gradients and, in the same round trip, pulls the rows the next
batch needs. Reports test AUC and log loss beside the generating model's AUC (the best
achievable), with an AUC timeline for plots.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from zps.jobs.ctrdata import DENSE, FIELDS, auc, log_loss, make_ctr
from zps.jobs.progress import progress_bar

DENSE_LR = 0.01
L2 = 1.0  # FTRL's L2 strength: keeps the weights of rarely seen ids small


def fields() -> list[str]:
    return [f"field{f:02d}" for f in range(FIELDS)]


def train_ctr(ps: Any, ctx: Any) -> dict[str, Any]:
    """Train on this worker's shard; every step is one push_pull_rows per field and one
    push_pull of the dense part."""
    data = make_ctr(seed=ctx.seed)
    ids, dense, labels = data.shard(ctx.worker_index, ctx.num_workers)
    for name in fields():
        ps.init_rows(name, dim=1, init="zeros",
                     optimizer={"name": "ftrl", "lr": ctx.lr, "l2": L2})
    params = ps.init({"dense": np.zeros(DENSE, np.float32), "bias": np.zeros(1, np.float32)},
                     optimizer={"name": "adam", "lr": DENSE_LR})
    plan = batch_plan(ctx, len(labels), len(data.train_labels))
    weights = [ps.pull_rows(name, ids[plan[0], f]) for f, name in enumerate(fields())]
    losses: list[float] = []
    timeline: list[dict[str, float]] = []
    start = time.perf_counter()
    with progress_bar(ctx, len(plan)) as bar:
        for step, idx in enumerate(plan):
            logits = params["bias"][0] + dense[idx] @ params["dense"] + sum(
                w[:, 0] for w in weights)
            losses.append(log_loss(labels[idx], logits))
            # Per-example gradients for the rows (summed per id by the client: FTRL's
            # per-coordinate rates expect them), their mean for the dense part.
            g = (1 / (1 + np.exp(-logits)) - labels[idx]).astype(np.float32)
            following = plan[step + 1] if step + 1 < len(plan) else idx
            weights = [ps.push_pull_rows(name, ids[idx, f], g[:, None],
                                         pull_ids=ids[following, f])
                       for f, name in enumerate(fields())]
            g /= len(idx)
            params = ps.push_pull({"dense": dense[idx].T @ g, "bias": g.sum(keepdims=True)},
                                  weight=len(idx))
            bar.update(1)
            if ctx.eval_every and (step + 1) % ctx.eval_every == 0:
                timeline.append({"seconds": time.perf_counter() - start, "step": step + 1,
                                 "test_auc": evaluate(ps, data, params)[0]})
            if (step + 1) % 10 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-10:]):.4f}")
    seconds = time.perf_counter() - start
    test_auc, test_loss = evaluate(ps, data, ps.pull())
    return {"worker": ctx.worker_index, "steps": len(plan), "losses": losses,
            "timeline": timeline, "seconds": seconds, "test_auc": test_auc,
            "test_log_loss": test_loss, "best_auc": auc(data.test_labels, data.test_logits),
            "samples_per_s": len(plan) * ctx.batch_size / seconds}


def evaluate(ps: Any, data: Any, params: dict[str, np.ndarray]) -> tuple[float, float]:
    """Test AUC and log loss (pulls create no rows: ids never seen read as zero)."""
    logits = params["bias"][0] + data.test_dense @ params["dense"]
    for f, name in enumerate(fields()):
        logits = logits + ps.pull_rows(name, data.test_ids[:, f])[:, 0]
    return auc(data.test_labels, logits), log_loss(data.test_labels, logits)


def batch_plan(ctx: Any, shard: int, total: int) -> list[np.ndarray]:
    """This worker's batches (indices into its shard of ``shard`` examples), every epoch
    a new order; as many steps as the largest shard of ``total`` needs, so that sync
    rounds hear from every worker."""
    steps = math.ceil(math.ceil(total / ctx.num_workers) / ctx.batch_size)
    rng = np.random.default_rng(ctx.seed + 1 + ctx.worker_index)
    return [b for _ in range(ctx.epochs) for b in _order(rng, shard, steps, ctx.batch_size)]


def _order(rng: np.random.Generator, n: int, steps: int, batch: int) -> list[np.ndarray]:
    order = rng.permutation(n)
    return [order[(np.arange(batch) + s * batch) % n] for s in range(steps)]
