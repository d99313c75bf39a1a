"""The parameters of a wrapped optimizer: one slot per parameter (its table, its values
pulled last, its scratch buffer), grouped in buckets, and their names checked."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from zps.client import Handle
from zps.errors import ConfigError
from zps.store import parse_optimizer
from zps.torch.tensors import check_floating, numpy_view, shares_memory, staged_copy


@dataclass(eq=False, slots=True)
class Slot:
    """One parameter and its table."""

    name: str
    table: str
    param: torch.Tensor
    shape: torch.Size
    dtype: torch.dtype
    device: torch.device
    master: np.ndarray  # the values pulled last: a view of the parameter when direct
    direct: bool
    bucket: int = 0
    passes: int = 0  # backward passes seen since the last step
    scratch: np.ndarray | None = None  # the delta (or staged gradient) being sent


@dataclass(eq=False, slots=True)
class Bucket:
    """Parameters sent together, as one push_pull."""

    slots: list[Slot] = field(default_factory=list)
    ready: int = 0
    handle: Handle | None = None


def server_optimizer_spec(value: str | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``"adam:1e-3"``, ``"sgd:LR[:MOMENTUM]"`` or a spec map -> the tables' optimizer."""
    if value is None or isinstance(value, Mapping):
        return dict(value) if value else None
    try:
        return parse_optimizer(value)
    except ValueError as exc:
        raise ConfigError(f"server_optimizer: {exc}") from None


def make_slots(groups: list[dict[str, Any]],
               named: Iterable[tuple[str, torch.Tensor]] | None, prefix: str) -> list[Slot]:
    """A slot per parameter of the optimizer's ``groups`` that requires grad, named
    from ``named`` (default ``param.G.I``); ``ConfigError`` for bad names."""
    optimized = [p for group in groups for p in group["params"]]
    if named is None:
        pairs = [(f"param.{g}.{i}", p) for g, group in enumerate(groups)
                 for i, p in enumerate(group["params"])]
    else:
        pairs = _checked_names(named, optimized)
    slots = []
    for name, param in pairs:
        if not param.requires_grad:
            continue
        check_floating(name, param)
        direct = shares_memory(param)
        master = numpy_view(param) if direct else staged_copy(param)
        slots.append(Slot(name, prefix + name, param, param.shape, param.dtype,
                          param.device, master, direct))
    if not slots:
        raise ConfigError("the optimizer has no parameter that requires grad")
    return slots

def make_buckets(slots: list[Slot], limit: int) -> list[Bucket]:
    """Buckets of at most ``limit`` bytes (or one parameter), in reverse order of the
    parameters (the order backward reaches them)."""
    buckets = [Bucket()]
    size = 0
    for slot in reversed(slots):
        nbytes = slot.master.nbytes
        if buckets[-1].slots and size + nbytes > limit:
            buckets.append(Bucket())
            size = 0
        slot.bucket = len(buckets) - 1
        buckets[-1].slots.append(slot)
        size += nbytes
    return buckets


def _checked_names(named: Iterable[tuple[str, torch.Tensor]],
                   optimized: list[torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """The optimizer's parameters with their names, in ``named``'s order."""
    pairs = list(named)
    by_id: dict[int, str] = {}
    seen: set[str] = set()
    for item in pairs:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
                and isinstance(item[1], torch.Tensor)):
            raise ConfigError("named_parameters must be (name, tensor) pairs, as "
                              "model.named_parameters() gives")
        name, param = item
        if name in seen:
            raise ConfigError(f"named_parameters gives the name {name!r} twice; every "
                              "parameter needs its own name")
        seen.add(name)
        by_id.setdefault(id(param), name)
    wanted = {id(p) for p in optimized}
    for param in optimized:
        if id(param) not in by_id:
            raise ConfigError(
                f"the optimizer has a parameter of shape {list(param.shape)} that "
                "named_parameters does not name; pass named_parameters="
                "model.named_parameters() of the model the optimizer was built from")
    return [(name, p) for name, p in pairs if id(p) in wanted and by_id[id(p)] == name]
