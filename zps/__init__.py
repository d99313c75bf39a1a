"""zps: a parameter server for distributed machine learning.

Embed a worker in five lines::

    import zps
    with zps.Client(["tcp://127.0.0.1:5570"]) as ps:
        ps.init({"w": w0})
        params = ps.push_pull({"w": dw})

The clients and the server are imported on first use, so ``import zps.protocol`` (or any
other sans-IO part) loads neither ZeroMQ nor asyncio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from zps.config import ClientConfig, ServerConfig
from zps.errors import (
    ClosedError,
    ConfigError,
    ConnectionLost,
    ForbiddenError,
    ProtocolError,
    RejectedError,
    RemoteError,
    ServerUnreachable,
    ShapeMismatchError,
    UnknownTableError,
    ZpsError,
)

if TYPE_CHECKING:
    from zps.client import AsyncClient, Client
    from zps.server import Server

__version__ = "0.2.0"

_LAZY = {"AsyncClient": "zps.client", "Client": "zps.client", "Server": "zps.server"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'zps' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "AsyncClient",
    "Client",
    "ClientConfig",
    "ClosedError",
    "ConfigError",
    "ConnectionLost",
    "ForbiddenError",
    "ProtocolError",
    "RejectedError",
    "RemoteError",
    "Server",
    "ServerConfig",
    "ServerUnreachable",
    "ShapeMismatchError",
    "UnknownTableError",
    "ZpsError",
    "__version__",
]
