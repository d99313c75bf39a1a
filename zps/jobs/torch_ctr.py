"""``zps-worker --job torch-ctr``: a DLRM-style click model in PyTorch on zps.

One ``zps.torch.EmbeddingBag`` per categorical field (26 row tables, rows created on first
push, Adagrad on the servers) and a dense part in torch: a bottom MLP over the 13 dense
features, the pairwise dot products of all 27 vectors (DLRM's interaction), and a top MLP
to the click logit. The dense part trains through ``DistributedOptimizer`` (local Adam,
its deltas pushed). Each step prefetches the next batch's rows with this step's push.
Reports test AUC and log loss beside the generating model's AUC (the best achievable).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn

import zps.torch as zt
from zps.jobs.ctr import batch_plan
from zps.jobs.ctrdata import DENSE, FIELDS, auc, log_loss, make_ctr
from zps.jobs.progress import progress_bar

DIM = 16
DENSE_LR = 1e-3
EVAL_BATCH = 8192


class DLRM(nn.Module):
    """Embeddings per field, a bottom and a top MLP, dot-product interactions."""

    def __init__(self, ps: Any, lr: float) -> None:
        super().__init__()
        self.embeddings: list[zt.EmbeddingBag] = nn.ModuleList(  # type: ignore[assignment]
            zt.EmbeddingBag(ps, f"emb{f:02d}", DIM, mode="sum", init="normal:0.01",
                            optimizer={"name": "adagrad", "lr": lr})
            for f in range(FIELDS))
        self.bottom = nn.Sequential(nn.Linear(DENSE, 64), nn.ReLU(), nn.Linear(64, DIM),
                                    nn.ReLU())
        pairs = (FIELDS + 1) * FIELDS // 2
        self.top = nn.Sequential(nn.Linear(pairs + DIM, 64), nn.ReLU(), nn.Linear(64, 1))
        self.pairs = torch.triu_indices(FIELDS + 1, FIELDS + 1, offset=1)

    def prefetch(self, ids: np.ndarray) -> None:
        for f, embedding in enumerate(self.embeddings):
            embedding.prefetch(ids[:, f])

    def forward(self, ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        x = self.bottom(dense)
        vectors = torch.stack([x, *(e(ids[:, f:f + 1]) for f, e in
                                    enumerate(self.embeddings))], dim=1)
        dots = torch.bmm(vectors, vectors.transpose(1, 2))[:, self.pairs[0], self.pairs[1]]
        return self.top(torch.cat([x, dots], dim=1)).squeeze(1)


def run(ps: Any, ctx: Any) -> dict[str, Any]:
    """Train on this worker's shard; every step is a push_pull of the dense part and a
    push of each field's rows that also pulls the next batch's."""
    torch.set_num_threads(1)
    torch.manual_seed(ctx.seed)
    data = make_ctr(seed=ctx.seed)
    ids, dense, labels = data.shard(ctx.worker_index, ctx.num_workers)
    model = DLRM(ps, ctx.lr)
    opt = zt.DistributedOptimizer(torch.optim.Adam(model.parameters(), lr=DENSE_LR), ps,
                                  named_parameters=model.named_parameters(),
                                  server_optimizer=ctx.server_optimizer, weight=ctx.batch_size)
    zt.broadcast_parameters(ps, model)
    plan = batch_plan(ctx, len(labels), len(data.train_labels))
    losses: list[float] = []
    timeline: list[dict[str, float]] = []
    start = time.perf_counter()
    with progress_bar(ctx, len(plan)) as bar:
        for step, idx in enumerate(plan):
            if step + 1 < len(plan):
                model.prefetch(ids[plan[step + 1]])
            opt.zero_grad()
            logits = model(torch.from_numpy(ids[idx]), torch.from_numpy(dense[idx]))
            loss = nn.functional.binary_cross_entropy_with_logits(
                logits, torch.from_numpy(labels[idx]))
            loss.backward()
            opt.step()
            losses.append(loss.item())
            bar.update(1)
            if ctx.eval_every and (step + 1) % ctx.eval_every == 0:
                timeline.append({"seconds": time.perf_counter() - start, "step": step + 1,
                                 "test_auc": evaluate(model, data)[0]})
            if (step + 1) % 10 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-10:]):.4f}")
    for embedding in model.embeddings:
        embedding.synchronize()
    seconds = time.perf_counter() - start
    test_auc, test_loss = evaluate(model, data)
    return {"worker": ctx.worker_index, "steps": len(plan), "losses": losses,
            "timeline": timeline, "seconds": seconds, "test_auc": test_auc,
            "test_log_loss": test_loss, "best_auc": auc(data.test_labels, data.test_logits),
            "samples_per_s": len(plan) * ctx.batch_size / seconds}


def evaluate(model: DLRM, data: Any) -> tuple[float, float]:
    """Test AUC and log loss, in eval mode (pulls create no rows)."""
    model.eval()
    logits = []
    with torch.no_grad():
        for at in range(0, len(data.test_labels), EVAL_BATCH):
            part = slice(at, at + EVAL_BATCH)
            logits.append(model(torch.from_numpy(data.test_ids[part]),
                                torch.from_numpy(data.test_dense[part])).numpy())
    model.train()
    scores = np.concatenate(logits).astype(np.float64)
    return auc(data.test_labels, scores), log_loss(data.test_labels, scores)

