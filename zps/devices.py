"""Where a worker's arrays live: NumPy on the host, or an array-API module on a device.

The client takes arrays of any array-API namespace (NumPy; CuPy on a GPU; anything else
that follows the standard, e.g. ``array_api_strict`` in the tests) and gives results back
in the namespace it was given. Only host bytes cross the wire, so a device array is
compressed where it lives and only the compressed parts are copied to the host. CuPy is
imported lazily, only when asked for or when a CuPy array is seen; a CUDA torch tensor is
taken as CuPy through DLPack (no copy).
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Any

import array_api_compat
import numpy as np

from zps.errors import ConfigError

log = logging.getLogger("zps.devices")

DEVICES = ("auto", "cpu", "cuda")


def cuda_available() -> bool:
    """True if CuPy imports and sees a CUDA device."""
    try:
        import cupy  # type: ignore[import-not-found]

        return bool(cupy.cuda.is_available())
    except Exception:  # not installed, no driver, a broken install: no GPU to use
        return False


def array_module(device: str) -> ModuleType:
    """The array module for ``--device``: ``cpu`` NumPy, ``cuda`` CuPy (``ConfigError`` if
    no GPU is usable), ``auto`` CuPy when a GPU is there, else NumPy with one log line."""
    if device not in DEVICES:
        raise ConfigError(f"device {device!r} must be one of {', '.join(DEVICES)}")
    if device == "cpu":
        return np
    if cuda_available():
        import cupy

        return cupy  # type: ignore[no-any-return]
    if device == "cuda":
        raise ConfigError("--device cuda: no CUDA device is usable (pip install 'zps[gpu]' "
                          "on a machine with an NVIDIA GPU and driver), or use --device cpu")
    if _cupy_installed():  # installed for a GPU that is not there: worth a warning
        log.warning("CuPy is installed but sees no CUDA device: running on the CPU with NumPy")
    else:
        log.info("no CUDA device (CuPy not installed): running on the CPU with NumPy")
    return np


def _cupy_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("cupy") is not None


def namespace(array: Any) -> ModuleType | None:
    """The array-API namespace of a device array, or None for what NumPy takes directly
    (NumPy arrays, lists, scalars, CPU torch tensors)."""
    if type(array) is np.ndarray or isinstance(
            array, np.ndarray | np.generic | int | float | list | tuple):
        return None
    if _is_cuda_torch(array) or array_api_compat.is_cupy_array(array):
        import cupy  # (a cupy.ndarray has no __array_namespace__)

        return cupy  # type: ignore[no-any-return]
    get = getattr(array, "__array_namespace__", None)
    if get is None:
        return None
    xp = get()
    return None if xp is np or getattr(xp, "__name__", "") == "numpy" else xp  # type: ignore[no-any-return]


def as_device_array(array: Any, xp: ModuleType) -> Any:
    """``array`` as an array of ``xp`` (a CUDA torch tensor becomes CuPy without a copy)."""
    if _is_cuda_torch(array):
        return xp.from_dlpack(array)
    return array


def to_host(xp: ModuleType, array: Any) -> np.ndarray:
    """A C-contiguous NumPy copy of ``array`` (CuPy: one device-to-host copy)."""
    if hasattr(xp, "asnumpy"):
        return np.ascontiguousarray(xp.asnumpy(array))
    return np.ascontiguousarray(np.from_dlpack(array))


class HostCopies:
    """Device-to-host copies of one message's encoded parts. With CuPy each part goes into
    pinned host memory (CuPy's pinned pool: reused, and given back once the message no
    longer needs it) on a copy stream of its own, after the encoding that made it: the
    copy of one part overlaps the encoding of the next, and ``wait()`` blocks once per
    message. Other namespaces copy at once."""

    def __init__(self, xp: ModuleType) -> None:
        self.xp = xp
        self._cupy = hasattr(xp, "cuda") and hasattr(xp, "asnumpy")
        self._pending: list[Any] = []  # device parts alive until their copy is done
        self._stream: Any = None

    def add(self, array: Any) -> np.ndarray:
        """A host array that holds ``array`` once ``wait()`` returned."""
        if not self._cupy:
            return to_host(self.xp, array)
        import cupyx  # type: ignore[import-not-found]

        cuda = self.xp.cuda
        if self._stream is None:
            self._stream = _copy_stream(cuda)
        self._stream.wait_event(cuda.get_current_stream().record())  # after its encode
        pinned = cupyx.empty_pinned(array.shape, dtype=array.dtype)
        array.get(stream=self._stream, out=pinned)  # asynchronous, on the copy stream
        self._pending.append(array)
        return pinned  # type: ignore[no-any-return]

    def wait(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()
        self._pending.clear()


_COPY_STREAMS: dict[int, Any] = {}


def _copy_stream(cuda: Any) -> Any:
    """One copy stream per device, made on first use."""
    device = cuda.Device().id
    if device not in _COPY_STREAMS:
        _COPY_STREAMS[device] = cuda.Stream(non_blocking=True)
    return _COPY_STREAMS[device]


def host_copy(array: Any) -> Any:
    """``array`` on the host (device arrays copied once; anything else as it is)."""
    xp = namespace(array)
    return array if xp is None else to_host(xp, array)


def from_host(xp: ModuleType, array: np.ndarray, out: Any = None) -> Any:
    """``array`` in ``xp`` (a host-to-device copy for CuPy), or written into ``out``."""
    if out is None:
        return xp.asarray(array)
    if hasattr(out, "set"):  # CuPy: straight from host memory into the device array
        out.set(array)
    else:
        out[...] = xp.asarray(array)
    return out


def device_nbytes(array: Any) -> int:
    """Bytes of an array of any namespace (the standard has no ``nbytes``)."""
    nbytes = getattr(array, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    return int(np.dtype(str(array.dtype)).itemsize * _size(array.shape))


def dtype_name(array: Any) -> str:
    """``"float32"`` for any namespace's float32 (their dtype objects differ)."""
    return np.dtype(str(array.dtype).rsplit(".", 1)[-1]).name


def _size(shape: tuple[int, ...]) -> int:
    size = 1
    for n in shape:
        size *= int(n)
    return size


def _is_cuda_torch(array: Any) -> bool:
    return type(array).__module__.startswith("torch") and getattr(array, "is_cuda", False)
