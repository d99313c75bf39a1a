"""Compiled CPU kernels for the codecs (numba): loaded on first use, behind one switch.

For NumPy arrays of float32 or float64 the codecs run fused kernels (``numba_blocks``,
``numba_topk``) that read each value once or twice instead of once per NumPy operation.
Everything else (CuPy arrays, other dtypes, strided input, numba missing or failing to
compile, or ``use_kernels(False)``) runs the codecs' array-module code, which is the
reference: the two give the same bits, which ``tests/test_kernels.py`` checks.

numba compiles each kernel once per signature and caches the machine code on disk
(``cache=True``: ``__pycache__`` beside the module, or numba's user cache directory when
that is not writable), so a process pays compilation once per install, then milliseconds.
All kernels are compiled (or loaded) together on first use, so a kernel that fails to
compile turns the kernels off for the process before any codec has used one.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_UNSIGNED: dict[np.dtype[Any], type[np.unsignedinteger[Any]]] = {
    np.dtype(np.float32): np.uint32, np.dtype(np.float64): np.uint64}

_lock = threading.Lock()
_state: dict[str, Any] = {"on": True, "loaded": None, "tried": False}


def use_kernels(on: bool) -> bool:
    """Turn the compiled kernels on or off for this process; returns the previous setting.

    For tests and benchmarks that compare the two paths: configuration proper is parsed at
    the edge, and the kernels need none.
    """
    previous = bool(_state["on"])
    _state["on"] = bool(on)
    return previous


def kernels_available() -> bool:
    """Whether the kernels are on and numba compiled them (compiling them if not yet)."""
    return bool(_state["on"]) and _load() is not None


def compiled(xp: ModuleType, *arrays: Any) -> Any | None:
    """The kernel namespace to run on ``arrays``, or None for the array-module code:
    kernels run only for NumPy (``xp`` is numpy), for C-contiguous float32 or float64
    arrays of one dtype, with the switch on and numba working."""
    if xp is not np or not _state["on"]:
        return None
    first = arrays[0]
    for a in arrays:
        if not (isinstance(a, np.ndarray) and a.dtype == first.dtype and a.dtype in FLOATS
                and a.flags.c_contiguous):
            return None
    return _load()


def bit_args(dtype: np.dtype[Any]) -> tuple[np.ndarray, Any]:
    """``(spare, mask)`` for the kernels that read ``dtype`` values as bits: a fresh
    one-element scratch (kernels run without the GIL: one per call) and the unsigned mask
    that clears the sign bit."""
    unsigned = _UNSIGNED[np.dtype(dtype)]
    return np.zeros(1, unsigned), unsigned(np.iinfo(unsigned).max >> 1)


def frozen(array: np.ndarray) -> np.ndarray:
    """A read-only view of ``array``, for a kernel argument it only reads: one compiled
    signature whether the caller's array is writable or not (values from the wire are
    not)."""
    view = array.view()
    view.flags.writeable = False
    return view


def absmax(kernels: Any, values: np.ndarray) -> np.floating:
    """``max|values|`` (0 for none) as ``values``' dtype, in one pass: inf or NaN if it
    holds either."""
    return values.dtype.type(kernels.absmax(frozen(values), *bit_args(values.dtype)))


def feedback_bound(kernels: Any, buf: np.ndarray, delta: np.ndarray | None) -> Any | None:
    """An upper bound on ``|buf + delta|`` (saturated as error feedback adds) or ``|buf|``,
    or None if ``delta`` or ``buf`` holds NaN, or ``delta`` inf, or ``buf`` inf without a
    delta: then the array-module code runs, and refuses the input as it always has."""
    top = absmax(kernels, buf)
    if delta is None:
        return top if np.isfinite(top) else None
    extra = absmax(kernels, delta)
    if np.isnan(top) or not np.isfinite(extra):
        return None
    with np.errstate(over="ignore"):
        return min(top + extra, np.finfo(buf.dtype).max)


def feedback_kernels(xp: ModuleType, values: Any, delta: Any,
                     fits: Callable[[Any], bool]) -> Any | None:
    """The kernels for error feedback on ``values`` plus ``delta`` (or ``values`` alone if
    it is None), or None for the array-module code: where ``compiled`` says so, where a
    value is not finite, or where ``fits`` does not accept the bound on ``|values +
    delta|`` (a block the codec might refuse). So a kernel that starts never refuses, and
    the array-module code refuses what it always refused, the same way."""
    kernels = compiled(xp, values, *(() if delta is None else (delta,)))
    if kernels is None:
        return None
    bound = feedback_bound(kernels, values, delta)
    return kernels if bound is not None and fits(bound) else None


def _load() -> Any | None:
    if _state["tried"]:
        return _state["loaded"]
    with _lock:
        if not _state["tried"]:
            _state["loaded"] = _compile()
            _state["tried"] = True
    return _state["loaded"]


def _compile() -> Any | None:
    try:
        blocks = importlib.import_module("zps.codecs.numba_blocks")
        topk = importlib.import_module("zps.codecs.numba_topk")
        namespace = _Kernels(blocks, topk)
        _warm(namespace)
    except Exception as exc:  # numba missing, or too old or new for this NumPy, or LLVM
        log.debug("codec kernels are off, the NumPy code runs instead: %r", exc)
        return None
    return namespace


class _Kernels:
    """The kernels of both modules as one namespace."""

    def __init__(self, *modules: ModuleType) -> None:
        for module in modules:
            for name, value in vars(module).items():
                if callable(getattr(value, "py_func", None)):
                    setattr(self, name, value)


def _warm(kernels: Any) -> None:
    """Compile (or load from the cache) every signature the codecs use."""
    from zps.codecs.numba_topk import warm as warm_topk

    for dtype in FLOATS:
        x = np.linspace(-1, 1, 19, dtype=dtype)
        spare, mask = bit_args(dtype)
        q, bits = np.zeros(19, np.int8), np.zeros(3, np.uint8)
        scales = np.ones(3, np.float32)
        u = np.zeros(19, np.float32)
        kernels.int8_feedback(x.copy(), frozen(x), True, q, scales, 8, spare, mask)
        kernels.sign_feedback(x.copy(), frozen(x), True, bits, scales, 8)
        kernels.int8_random(frozen(x), frozen(u), q, scales, 8, spare, mask)
        kernels.sign_encode(frozen(x), bits, scales, 8)
        for factor in (dtype.type(1), dtype.type(0.5)):
            kernels.int8_decode_add(frozen(q), frozen(scales), x.copy(), 8, factor)
            kernels.sign_decode_add(frozen(bits), frozen(scales), x.copy(), 8, factor)
        kernels.absmax(frozen(x), spare, mask)
        warm_topk(kernels, x, spare, mask)
