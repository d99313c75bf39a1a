"""Every worker starts from the same values: parameters, buffers and optimizer state.

``broadcast_parameters`` and ``broadcast_optimizer_state`` use ``init``'s rule, the first
init of a table wins: whichever worker gets there first sets the values, and every worker
(including that one) leaves with what the servers hold. A worker that restored a
checkpoint should therefore call them before the others (or every worker loads it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from zps.client import Client
from zps.errors import ConfigError
from zps.torch.optimizer import LIVE, OWNER, DistributedOptimizer
from zps.torch.tensors import check_floating, copy_into, staged_copy

Named = Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]] | torch.nn.Module
STATE = "optim"  # optimizer state tables: PREFIX + "optim/" + parameter + "/" + key
HYPER = "optim/hyper"  # the groups' numeric settings (lr, momentum, betas...) as one table


def broadcast_parameters(ps: Client, params: Named, prefix: str = "") -> None:
    """Give every worker the same parameters and buffers.

    ``params``: a module (its parameters and buffers), a ``state_dict()`` or
    ``named_parameters()``. A parameter wrapped by a ``DistributedOptimizer`` uses its
    table; anything else gets a table ``prefix + name``. Integer buffers (BatchNorm's
    counts) travel as float64. Raises ``ConfigError`` for a tensor that is neither.
    """
    _check_client(ps)
    tensors = _named(params)
    by_spec: dict[str, tuple[dict[str, Any] | None, dict[str, np.ndarray],
                             list[tuple[str, torch.Tensor]]]] = {}
    for name, tensor in tensors:
        table, spec = _table(tensor, prefix + name)
        key = repr(spec)
        group = by_spec.setdefault(key, (spec, {}, []))
        if tensor.is_floating_point():
            check_floating(name, tensor)
            group[1][table] = staged_copy(tensor)
        elif tensor.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
            group[1][table] = tensor.detach().cpu().numpy().astype(np.float64)
        else:
            raise ConfigError(f"cannot broadcast {name!r}: a {tensor.dtype} tensor")
        group[2].append((table, tensor))
    for spec, arrays, targets in by_spec.values():
        if not arrays:
            continue
        values = ps.init(arrays, optimizer=spec)
        for table, tensor in targets:
            copy_into(tensor, values[table].astype(_numpy_dtype(tensor), copy=False))


def broadcast_optimizer_state(ps: Client, optimizer: torch.optim.Optimizer,
                              prefix: str = "") -> None:
    """Give every worker the same optimizer state (momentum buffers, Adam's moments and
    steps) and the same numeric group settings (``lr``, ``momentum``, ``betas``...).

    State tables are named after the parameters (``named_parameters`` of a
    ``DistributedOptimizer``, else by position). A worker whose optimizer has no state yet
    for a parameter adopts the state another worker created. Raises ``ConfigError`` for
    state that is not a tensor or a number.
    """
    _check_client(ps)
    prefix = prefix or getattr(optimizer, "_prefix", "")
    names = _param_names(optimizer)
    known = {str(t["name"]): t for t in ps.tables()}
    arrays: dict[str, np.ndarray] = {}
    places: list[tuple[str, torch.Tensor, str, Any]] = []  # (table, param, key, local)
    for param, name in names:
        for key, value in _state_entries(optimizer, param, name, known, prefix):
            table = f"{prefix}{STATE}/{name}/{key}"
            arrays[table] = _as_array(name, key, value)
            places.append((table, param, key, value))
    hyper_table, hyper = prefix + HYPER, _hyper(optimizer)
    if hyper.size:
        arrays[hyper_table] = hyper
    if not arrays:
        return
    values = ps.init(arrays)
    for table, param, key, local in places:
        optimizer.state[param][key] = _restored(values[table], local)
    if hyper.size:
        _set_hyper(optimizer, values[hyper_table])


# ---------------------------------------------------------------- parameters


def _check_client(ps: Any) -> None:
    if not isinstance(ps, Client):
        raise ConfigError("zps.torch needs a connected zps.Client (the blocking one); got "
                          f"{type(ps).__name__}")


def _named(params: Named) -> list[tuple[str, torch.Tensor]]:
    if isinstance(params, torch.nn.Module):
        return [*params.named_parameters(), *params.named_buffers()]
    items = params.items() if isinstance(params, Mapping) else params
    pairs = []
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1],
                                                                            torch.Tensor)):
            raise ConfigError("broadcast_parameters takes a module, a state_dict() or "
                              "named_parameters()")
        pairs.append((str(item[0]), item[1]))
    return pairs


def _table(tensor: torch.Tensor, default: str) -> tuple[str, dict[str, Any] | None]:
    """A wrapped parameter's table and server optimizer, else ``default`` and none. A
    ``state_dict()`` holds detached aliases of the parameters: found by their memory."""
    owner = getattr(tensor, OWNER, None)
    optimizer = owner() if owner is not None else None
    if isinstance(optimizer, DistributedOptimizer):
        found = optimizer.table_of(tensor)
        if found is not None:
            return found
    for live in list(LIVE):
        found = live.table_of_alias(tensor)
        if found is not None:
            return found
    return default, None


def _numpy_dtype(tensor: torch.Tensor) -> np.dtype:
    if tensor.is_floating_point():
        return np.dtype(np.float64 if tensor.dtype == torch.float64 else np.float32)
    return torch.empty(0, dtype=tensor.dtype).numpy().dtype  # type: ignore[no-any-return]


# ---------------------------------------------------------------- optimizer state


def _param_names(optimizer: torch.optim.Optimizer) -> list[tuple[torch.Tensor, str]]:
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if isinstance(optimizer, DistributedOptimizer):
        tables = {id(s.param): s.name for s in optimizer._slots}
    else:
        tables = {}
    names = []
    for g, group in enumerate(optimizer.param_groups):
        for i, param in enumerate(group["params"]):
            names.append((param, tables.get(id(param), f"param.{g}.{i}")))
    if len({n for _, n in names}) != len(params):
        raise ConfigError("the optimizer's parameters do not have distinct names")
    return names


def _state_entries(optimizer: torch.optim.Optimizer, param: torch.Tensor, name: str,
                   known: Mapping[str, Mapping[str, Any]],
                   prefix: str) -> list[tuple[str, Any]]:
    """The state of ``param``: its own, or (none yet) zeros shaped as another worker's,
    which init then replaces with what that worker stored."""
    state = optimizer.state.get(param) or {}
    if state:
        return list(state.items())
    head = f"{prefix}{STATE}/{name}/"
    adopted = []
    for table, info in known.items():
        if table.startswith(head):
            shape = tuple(info.get("shape", ()))
            if _is_tensor_step(table):  # torch's own optimizers: a float32 0-d CPU tensor
                value: Any = torch.zeros((), dtype=torch.float32)
            elif shape:  # state beside the parameter: its dtype and device
                value = torch.zeros(shape, dtype=param.dtype, device=param.device)
            else:
                value = 0.0
            adopted.append((table[len(head):], value))
    return adopted


def _is_tensor_step(table: str) -> bool:
    return table.endswith("/step")  # torch's own optimizers keep ``step`` as a 0-d tensor


def _as_array(name: str, key: str, value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        if value.is_floating_point():
            return staged_copy(value)
        return value.detach().cpu().numpy().astype(np.float64)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return np.asarray(float(value), np.float64)
    raise ConfigError(f"cannot broadcast the optimizer state {key!r} of {name!r}: a "
                      f"{type(value).__name__}, not a tensor or a number")


def _restored(values: np.ndarray, local: Any) -> Any:
    if isinstance(local, torch.Tensor):
        return torch.from_numpy(np.array(values)).to(local.device, local.dtype)
    return type(local)(values.item()) if isinstance(local, int | float) else values.item()


def _settings(optimizer: torch.optim.Optimizer, group: dict[str, Any]) -> list[str]:
    """The keys of a group's settings, sorted: the optimizer's own (not what an LR
    scheduler adds, such as ``initial_lr``, so that the table keeps its shape)."""
    return sorted(k for k in group if k != "params" and k in optimizer.defaults)


def _hyper(optimizer: torch.optim.Optimizer) -> np.ndarray:
    """The groups' numeric settings in a fixed order (keys sorted, per group)."""
    values: list[float] = []
    for group in optimizer.param_groups:
        for key in _settings(optimizer, group):
            values.extend(_numbers(group[key]))
    return np.asarray(values, np.float64)


def _set_hyper(optimizer: torch.optim.Optimizer, values: np.ndarray) -> None:
    at = 0
    for group in optimizer.param_groups:
        for key in _settings(optimizer, group):
            value = group[key]
            count = len(_numbers(value))
            if not count:
                continue
            got = values[at:at + count].tolist()
            at += count
            if isinstance(value, tuple):
                group[key] = tuple(type(v)(g) for v, g in zip(value, got, strict=True))
            elif isinstance(value, torch.Tensor):
                value.fill_(got[0])
            else:
                group[key] = type(value)(got[0])


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return [float(value.item())]
    if isinstance(value, tuple) and value and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        return [float(v) for v in value]
    return []
