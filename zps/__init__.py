"""zps: a parameter server for distributed machine learning.

Embed a worker in five lines::

    import zps
    with zps.Client(["tcp://127.0.0.1:5570"]) as ps:
        ps.init({"w": w0})
        params = ps.push_pull({"w": dw})
"""

from zps.client import AsyncClient, Client
from zps.config import ClientConfig, ServerConfig
from zps.errors import (
    ClosedError,
    ConfigError,
    ConnectionLost,
    ProtocolError,
    RejectedError,
    RemoteError,
    ServerUnreachable,
    ShapeMismatchError,
    UnknownTableError,
    ZpsError,
)
from zps.server import Server

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "Client",
    "ClientConfig",
    "ClosedError",
    "ConfigError",
    "ConnectionLost",
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
