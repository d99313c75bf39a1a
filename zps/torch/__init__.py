"""PyTorch on zps: a distributed optimizer, broadcasts, and remote embedding layers.

::

    import torch, zps, zps.torch as zt

    ps = zps.Client(servers)
    opt = zt.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), ps,
                                  named_parameters=model.named_parameters())
    zt.broadcast_parameters(ps, model)
    for x, y in loader:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()  # the parameters now hold the servers' values

Needs PyTorch (``pip install 'zps[torch]'``).
"""

from __future__ import annotations

try:
    import torch as _torch  # noqa: F401
except ImportError:  # pragma: no cover - the message is the point
    raise ImportError("zps.torch needs PyTorch: pip install 'zps[torch]' "
                      "(or torch itself)") from None

from zps.torch.broadcast import broadcast_optimizer_state, broadcast_parameters
from zps.torch.embedding import Embedding, EmbeddingBag
from zps.torch.optimizer import DistributedOptimizer

__all__ = [
    "DistributedOptimizer",
    "Embedding",
    "EmbeddingBag",
    "broadcast_optimizer_state",
    "broadcast_parameters",
]
