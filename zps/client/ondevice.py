"""Calls on device arrays (sans-IO): what a call returns comes back where it was asked.

The wire carries host bytes. A push of device arrays is compressed on its device (see
``Planner._compress``) and only the encoded parts are copied to the host; what a call
returns is received into host arrays, then copied to the device once: into the device
arrays given as ``out=``, or into new arrays of the namespace the deltas came in (or
``device=``). Row calls take device ids and updates and return device rows likewise.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from zps.devices import array_module, dtype_name, from_host, namespace
from zps.errors import ConfigError, ShapeMismatchError

if TYPE_CHECKING:
    from zps.client.calls import Call


def resolve(device: str | ModuleType | None) -> ModuleType | None:
    """``device=``: None or ``"cpu"`` for NumPy (None), ``"cuda"`` for CuPy, or an array
    module itself (``cupy``; ``array_api_strict`` in tests)."""
    if device is None or isinstance(device, ModuleType):
        return None if device is np else device
    if not isinstance(device, str):
        raise ConfigError(f"device= must be 'cpu', 'cuda' or an array module, not {device!r}")
    xp = array_module(device)
    return None if xp is np else xp


def split_out(out: Mapping[str, Any] | None, specs: Mapping[str, Any],
              ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """``out=`` as (host arrays the replies fill, device arrays filled afterwards); a
    device array not of its table's shape and dtype is refused before anything is sent
    (``ShapeMismatchError``; the host arrays are checked by ``Planner.outputs``)."""
    if out is None:
        return None, {}
    host = {n: a for n, a in out.items() if namespace(a) is None}
    device = {n: a for n, a in out.items() if namespace(a) is not None}
    for name, array in device.items():
        spec = specs.get(name)
        if spec is not None and (tuple(array.shape) != spec.shape
                                 or dtype_name(array) != spec.dtype.name):
            raise ShapeMismatchError(
                "shape_mismatch", f"out[{name!r}] must be a {spec.dtype} array of shape "
                                  f"{list(spec.shape)}, got {dtype_name(array)}"
                                  f"{list(array.shape)}")
    return (host if host or not device else None), device


def deltas_namespace(deltas: Mapping[str, Any]) -> ModuleType | None:
    """The one device namespace of a call's deltas (None: all host); ``ConfigError`` for
    a mix of devices."""
    found = {id(xp): xp for xp in map(namespace, deltas.values()) if xp is not None}
    if len(found) > 1:
        raise ConfigError("give one call's arrays on one device (or all on the host)")
    return next(iter(found.values()), None)


def on_device(call: Call, xp: ModuleType | None, device_out: Mapping[str, Any]) -> Call:
    """``call``, returning its arrays in ``xp`` (and into ``device_out``'s arrays)."""
    if xp is None and not device_out:
        return call
    inner = call.finish

    def finish(done: Call) -> Any:
        value = inner(done) if inner is not None else done.out
        if isinstance(value, np.ndarray):
            return from_host(xp, value) if xp is not None else value
        if not isinstance(value, dict):
            return value
        moved = {}
        for name, array in value.items():
            target = device_out.get(name)
            space = namespace(target) if target is not None else xp
            moved[name] = from_host(space, array, target) if space is not None else array
        return moved
    call.finish = finish
    return call
