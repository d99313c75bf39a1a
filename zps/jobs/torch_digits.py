"""``zps-worker --job torch-digits``: PyTorch's MNIST example on the 8x8 digits, on zps.

``Net``, ``train`` and ``test`` are those of pytorch/examples ``mnist/main.py`` (two
convolutions, max pooling, dropout, two linear layers, Adadelta with StepLR), with the
network's sizes adapted to 8x8 images. The training loop is unchanged; what zps adds is
the three lines marked ``# zps`` in ``run``. ``single_process`` runs the same example
without zps, for the accuracy to compare against.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import StepLR
from torch.utils.data import DataLoader, TensorDataset

import zps.torch as zt
from zps.jobs.data import load_digits
from zps.jobs.progress import progress_bar

log = logging.getLogger("zps.jobs")
LOG_INTERVAL = 10


class Net(nn.Module):
    """The MNIST example's network; 28x28 -> 8x8 inputs (so fc1 takes 64 * 2 * 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(256, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = F.relu(x)
        x = self.conv2(x)
        x = F.relu(x)
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = self.fc1(x)
        x = F.relu(x)
        x = self.dropout2(x)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


def train(args: Any, model: nn.Module, device: torch.device, train_loader: DataLoader,
          optimizer: torch.optim.Optimizer, epoch: int) -> list[float]:
    """The example's ``train`` (it also returns the losses, for the worker's report)."""
    model.train()
    losses = []
    for batch_idx, (data, target) in enumerate(train_loader):
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if batch_idx % args.log_interval == 0 and args.progress:
            log.info("Train Epoch: %d [%d/%d]\tLoss: %.6f", epoch, batch_idx * len(data),
                     len(train_loader.dataset), loss.item())  # type: ignore[arg-type]
    return losses


def test(model: nn.Module, device: torch.device, test_loader: DataLoader) -> float:
    """The example's ``test``; returns the accuracy."""
    model.eval()
    test_loss = 0.0
    correct = 0
    with torch.no_grad():
        for data, target in test_loader:
            data, target = data.to(device), target.to(device)
            output = model(data)
            test_loss += F.nll_loss(output, target, reduction="sum").item()
            pred = output.argmax(dim=1, keepdim=True)
            correct += pred.eq(target.view_as(pred)).sum().item()
    return correct / len(test_loader.dataset)  # type: ignore[arg-type]


class Args:
    """The example's command-line settings, from the worker's job context."""

    def __init__(self, ctx: Any) -> None:
        self.batch_size = ctx.batch_size
        self.epochs = ctx.epochs
        self.lr = ctx.lr
        self.gamma = 0.7
        self.seed = ctx.seed
        self.log_interval = LOG_INTERVAL
        self.progress = ctx.progress


def loaders(ctx: Any) -> tuple[DataLoader, DataLoader]:
    """This worker's share of the training split (every share the same size, so sync
    rounds hear from every worker each step) and the test split."""
    data = load_digits(seed=ctx.seed)
    share = len(data.x_train) // ctx.num_workers
    x, y = data.shard(ctx.worker_index, ctx.num_workers)
    train_set = TensorDataset(torch.from_numpy(x[:share]).view(-1, 1, 8, 8),
                              torch.from_numpy(y[:share]))
    test_set = TensorDataset(torch.from_numpy(data.x_test).view(-1, 1, 8, 8),
                             torch.from_numpy(data.y_test))
    shuffle = torch.Generator().manual_seed(ctx.seed + 1 + ctx.worker_index)
    return (DataLoader(train_set, batch_size=ctx.batch_size, shuffle=True, generator=shuffle),
            DataLoader(test_set, batch_size=1000))


def run(ps: Any, ctx: Any) -> dict[str, Any]:
    """The example's ``main`` on this worker's share, through zps."""
    args = Args(ctx)
    torch.set_num_threads(1)  # several workers share the host's cores
    torch.manual_seed(args.seed)
    device = torch.device("cpu")
    train_loader, test_loader = loaders(ctx)
    model = Net().to(device)
    # As in Horovod's examples, the learning rate grows with the number of workers: a
    # sync step averages their updates (of as many batches).
    optimizer: torch.optim.Optimizer = torch.optim.Adadelta(model.parameters(),
                                                           lr=args.lr * ctx.num_workers)
    optimizer = zt.DistributedOptimizer(optimizer, ps,  # zps
                                        named_parameters=model.named_parameters(),
                                        server_optimizer=ctx.server_optimizer)
    zt.broadcast_parameters(ps, model)  # zps
    zt.broadcast_optimizer_state(ps, optimizer)  # zps
    return _epochs(args, model, device, train_loader, test_loader, optimizer, ctx)


def single_process(ctx: Any) -> dict[str, Any]:
    """The same example without zps (one process, the whole training split)."""
    args = Args(ctx)
    torch.manual_seed(args.seed)
    device = torch.device("cpu")
    whole = type(ctx)(**{**_fields(ctx), "worker_index": 0, "num_workers": 1})
    train_loader, test_loader = loaders(whole)
    model = Net().to(device)
    optimizer = torch.optim.Adadelta(model.parameters(), lr=args.lr)
    return _epochs(args, model, device, train_loader, test_loader, optimizer, whole)


def _epochs(args: Args, model: nn.Module, device: torch.device, train_loader: DataLoader,
            test_loader: DataLoader, optimizer: torch.optim.Optimizer,
            ctx: Any) -> dict[str, Any]:
    scheduler = StepLR(optimizer, step_size=1, gamma=args.gamma)
    losses: list[float] = []
    timeline: list[dict[str, float]] = []
    start = time.perf_counter()
    with progress_bar(ctx, args.epochs, unit="epoch") as bar:
        for epoch in range(1, args.epochs + 1):
            losses += train(args, model, device, train_loader, optimizer, epoch)
            accuracy = test(model, device, test_loader)
            timeline.append({"seconds": time.perf_counter() - start, "step": len(losses),
                             "test_accuracy": accuracy})
            scheduler.step()
            bar.update(1)
            bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}",
                            accuracy=f"{accuracy:.3f}")
    seconds = time.perf_counter() - start
    return {"worker": ctx.worker_index, "steps": len(losses), "losses": losses,
            "timeline": timeline, "seconds": seconds,
            "samples_per_s": len(losses) * args.batch_size / seconds,
            "test_accuracy": timeline[-1]["test_accuracy"]}


def _fields(ctx: Any) -> dict[str, Any]:
    return {name: getattr(ctx, name) for name in ctx.__dataclass_fields__}
