"""Torch tensors as the NumPy arrays zps sends and receives, without copies where possible.

A float32 or float64 tensor on the CPU, contiguous, shares its memory with a NumPy array:
zps pushes from it and receives pulls straight into it. Any other tensor (float16,
bfloat16, a CUDA tensor, a strided view) is *staged*: the servers hold a float32 master
copy, and the worker keeps the copy it last pulled beside the tensor, in NumPy.
"""

from __future__ import annotations

import numpy as np
import torch

from zps.errors import ConfigError

DIRECT_DTYPES = (torch.float32, torch.float64)


def shares_memory(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` can be used as a NumPy array in place (see the module doc)."""
    return (tensor.device.type == "cpu" and tensor.dtype in DIRECT_DTYPES
            and tensor.is_contiguous() and not tensor.is_sparse)


def numpy_view(tensor: torch.Tensor) -> np.ndarray:
    """The NumPy array sharing ``tensor``'s memory (``shares_memory`` must hold)."""
    return tensor.detach().numpy()  # type: ignore[no-any-return]


def staged_copy(tensor: torch.Tensor) -> np.ndarray:
    """A new NumPy copy of ``tensor`` in its table dtype (on the host)."""
    dtype = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    return tensor.detach().to("cpu", dtype).contiguous().numpy().copy()  # type: ignore[no-any-return]


def copy_into(tensor: torch.Tensor, values: np.ndarray) -> None:
    """Write ``values`` (a table's array) into ``tensor``, converting dtype and device."""
    with torch.no_grad():
        tensor.copy_(torch.from_numpy(values).view(tensor.shape))


def check_floating(name: str, tensor: torch.Tensor) -> None:
    """``ConfigError`` unless ``tensor`` holds real floating-point values zps can keep."""
    if not tensor.is_floating_point() or tensor.is_complex():
        raise ConfigError(f"{name!r} is a {tensor.dtype} tensor; zps keeps floating-point "
                          "tensors only (leave it out, or convert it to float)")
    if tensor.is_sparse:
        raise ConfigError(f"{name!r} is a sparse tensor; use zps.torch.Embedding for sparse "
                          "rows")
