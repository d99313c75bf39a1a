"""Remote embedding layers: ``Embedding`` and ``EmbeddingBag`` backed by a zps row table.

Drop-in for ``torch.nn.Embedding``/``EmbeddingBag`` in the forward pass (same arguments:
``input``, ``offsets``, ``per_sample_weights``), except that the rows live on the servers,
keyed by any int64 id (no ``num_embeddings``: a row exists once it is trained). Forward
deduplicates the batch's ids, pulls their rows and runs torch's own embedding kernel over
them; backward pushes the gradient of each distinct row (merged by id) to the servers,
whose per-row optimizer (``optimizer=``) takes the step. ``prefetch(ids)`` names the next
batch's ids: backward then pulls them in the same round trip as its push, so the next
forward finds its rows waiting. Pulls never create rows: ``model.eval()`` and
``torch.no_grad()`` forwards read and never grow the table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from zps.client import Client, Handle
from zps.errors import ConfigError

DEFAULT_OPTIMIZER = "sgd:0.01"
BAG_MODES = ("sum", "mean", "max")


def row_optimizer_spec(value: str | Mapping[str, Any]) -> dict[str, Any]:
    """``"adagrad:0.05"``, ``"sgd:LR[:MOMENTUM]"``, ``"adam:LR"``, ``"ftrl:LR"`` or a spec
    map -> the row table's optimizer."""
    if isinstance(value, Mapping):
        return dict(value)
    name, *numbers = str(value).split(":")
    try:
        values = [float(n) for n in numbers]
    except ValueError:
        values = []
    if name in ("adagrad", "adam", "ftrl") and len(values) == 1:
        return {"name": name, "lr": values[0]}
    if name == "sgd" and 1 <= len(values) <= 2:
        return {"name": "sgd", "lr": values[0], "momentum": values[1] if values[1:] else 0.0}
    raise ConfigError(f"row optimizer {value!r}: use sgd:LR[:MOMENTUM], adagrad:LR, adam:LR, "
                      "ftrl:LR or a map such as {'name': 'adagrad', 'lr': 0.05}")


class _RemoteRows(torch.nn.Module):
    """What both layers share: the table, the pulls, the pushes from backward."""

    def __init__(self, ps: Client, name: str, embedding_dim: int, *,
                 optimizer: str | Mapping[str, Any] = DEFAULT_OPTIMIZER,
                 init: str = "normal:0.01", dtype: str = "float32", admit_after: int = 1,
                 evict_after: float | None = None, max_rows: int | None = None,
                 weight: float | None = None) -> None:
        super().__init__()
        if not isinstance(ps, Client):
            raise ConfigError("zps.torch needs a connected zps.Client (the blocking one); "
                              f"got {type(ps).__name__}")
        if not isinstance(embedding_dim, int) or embedding_dim < 1:
            raise ConfigError(f"embedding_dim must be a positive integer, got {embedding_dim!r}")
        self.ps = ps
        self.name = name
        self.embedding_dim = embedding_dim
        # This worker's weight in a round (``--aggregate weighted``): its batch size. (Not
        # ``weight``: code that initialises every module's ``weight`` would find it.)
        self.push_weight = weight
        ps.init_rows(name, embedding_dim, dtype=dtype, init=init,
                     optimizer=row_optimizer_spec(optimizer), admit_after=admit_after,
                     evict_after=evict_after, max_rows=max_rows)
        self._next: np.ndarray | None = None  # distinct ids given to prefetch
        self._fetch: tuple[np.ndarray, Handle] | None = None  # a pull on its way
        self._pushes: list[Handle] = []
        self._grads: list[tuple[np.ndarray, np.ndarray]] = []  # this backward's, by lookup

    def extra_repr(self) -> str:
        return f"{self.name!r}, {self.embedding_dim}"

    def prefetch(self, ids: Any) -> None:
        """The ids of the next batch: their rows are pulled while this one computes (with
        this step's push when backward comes, at once in eval or ``no_grad``)."""
        distinct = np.unique(_ids(ids))
        if self._learning():
            self._next = distinct
        else:
            self._wait_pushes()
            self._fetch = (distinct, self.ps.pull_rows(self.name, distinct, wait=False))

    def synchronize(self) -> None:
        """Wait for this layer's pushes still in flight (their errors are raised)."""
        self._wait_pushes()

    def _learning(self) -> bool:
        return self.training and torch.is_grad_enabled()

    def _lookup(self, input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's distinct rows (a leaf that pushes its gradient from backward) and
        the index of each id among them, shaped as ``input``."""
        ids = _ids(input)
        distinct, inverse = np.unique(ids.ravel(), return_inverse=True)
        rows = torch.from_numpy(self._rows(distinct))
        if self._learning():
            rows.requires_grad_(True)
            rows.register_post_accumulate_grad_hook(lambda t: self._collect(distinct, t))
        index = torch.from_numpy(inverse.reshape(ids.shape))
        return rows, index

    def _rows(self, distinct: np.ndarray) -> np.ndarray:
        fetch = self._fetch
        if fetch is not None and np.array_equal(fetch[0], distinct):
            self._fetch = None
            return fetch[1].wait()  # type: ignore[no-any-return]
        if fetch is not None and self._learning():
            self._fetch = None  # another batch than announced: the prefetch is dropped
            fetch[1].wait()
        # (an evaluation between training steps leaves the training prefetch in place)
        self._wait_pushes()
        return self.ps.pull_rows(self.name, distinct)  # type: ignore[no-any-return]

    def _collect(self, distinct: np.ndarray, rows: torch.Tensor) -> None:
        """A lookup's row gradients are in: keep them, and push once at the end of this
        backward pass (a layer used several times in a step pushes one merged update)."""
        assert rows.grad is not None
        grads = rows.grad.numpy()  # (keeps the gradient's memory: nothing writes it again)
        rows.grad = None  # (a second backward through a retained graph starts from zero)
        if not self._grads:
            torch.autograd.Variable._execution_engine.queue_callback(self._push)
        self._grads.append((distinct, grads))

    def _push(self) -> None:
        collected, self._grads = self._grads, []
        if not collected:
            return
        ids = np.concatenate([d for d, _ in collected]) if len(collected) > 1 \
            else collected[0][0]
        grads = np.concatenate([g for _, g in collected]) if len(collected) > 1 \
            else collected[0][1]
        following, self._next = self._next, None
        if following is None and self._fetch is not None:
            following = self._fetch[0]  # pulled before this push: pull it again after it
        self._wait_pushes(done_only=True)
        if following is not None:
            handle = self.ps.push_pull_rows(self.name, ids, grads, pull_ids=following,
                                            weight=self.push_weight, wait=False)
            if self._fetch is not None:
                self._fetch[1].wait()
            self._fetch = (following, handle)
        else:
            self._pushes.append(self.ps.push_rows(self.name, ids, grads,
                                                  weight=self.push_weight, wait=False))
        self.ps.progress()

    def _wait_pushes(self, done_only: bool = False) -> None:
        pushes, self._pushes = self._pushes, []
        for handle in pushes:
            if done_only and not handle.done():
                self._pushes.append(handle)
            else:
                handle.wait()

    def _output(self, value: torch.Tensor, input: torch.Tensor) -> torch.Tensor:
        return value if input.device.type == "cpu" else value.to(input.device)


class Embedding(_RemoteRows):
    """``torch.nn.Embedding`` over row table ``name`` of ``embedding_dim`` values.

    ``Embedding(ps, "user", 64)``; ``forward(input)`` takes int64 ids of any shape (any
    values, negative included) and returns ``input.shape + (embedding_dim,)``. Keyword
    settings are those of ``init_rows``: ``optimizer`` (the servers' per-row optimizer,
    default ``sgd:0.01``; ``adagrad:LR``, ``adam:LR``, ``ftrl:LR`` or a spec map),
    ``init``, ``dtype``, ``admit_after``, ``evict_after``, ``max_rows``; and ``weight``.
    Raises ``ConfigError`` for bad settings, ``ShapeMismatchError`` if the table exists
    with other settings, and what the client raises when a server does not answer.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        rows, index = self._lookup(input)
        return self._output(F.embedding(index, rows), input)


class EmbeddingBag(_RemoteRows):
    """``torch.nn.EmbeddingBag`` over row table ``name``: sums, means or maxima of bags
    of rows.

    ``EmbeddingBag(ps, "item", 32, mode="sum")``; ``forward(input, offsets=None,
    per_sample_weights=None)`` as torch's: a 2-D ``input`` of fixed-size bags, or a 1-D
    ``input`` with ``offsets`` (``include_last_offset`` as torch's). Other settings as for
    ``Embedding``.
    """

    def __init__(self, ps: Client, name: str, embedding_dim: int, mode: str = "mean", *,
                 include_last_offset: bool = False, **settings: Any) -> None:
        if mode not in BAG_MODES:
            raise ConfigError(f"mode must be one of {', '.join(BAG_MODES)}, got {mode!r}")
        super().__init__(ps, name, embedding_dim, **settings)
        self.mode = mode
        self.include_last_offset = include_last_offset

    def extra_repr(self) -> str:
        return f"{self.name!r}, {self.embedding_dim}, mode={self.mode!r}"

    def forward(self, input: torch.Tensor, offsets: torch.Tensor | None = None,
                per_sample_weights: torch.Tensor | None = None) -> torch.Tensor:
        if per_sample_weights is not None and self.mode != "sum":
            raise ConfigError(f"per_sample_weights needs mode='sum' (as torch's "
                              f"EmbeddingBag), this bag's mode is {self.mode!r}")
        rows, index = self._lookup(input)
        if offsets is not None:
            offsets = offsets.cpu()
        if per_sample_weights is not None:
            per_sample_weights = per_sample_weights.cpu().to(rows.dtype)
        value = F.embedding_bag(index, rows, offsets, mode=self.mode,
                                per_sample_weights=per_sample_weights,
                                include_last_offset=self.include_last_offset)
        return self._output(value, input)


def _ids(value: Any) -> np.ndarray:
    """int64 ids from a tensor or array; ``ConfigError`` for anything but integers."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise ConfigError(f"embedding ids must be integers, got a {value.dtype} tensor")
        return value.detach().cpu().to(torch.int64).numpy()  # type: ignore[no-any-return]
    array = np.asarray(value)
    if array.dtype.kind not in "iu":
        raise ConfigError(f"embedding ids must be integers, got {array.dtype}")
    return array.astype(np.int64, copy=False)
