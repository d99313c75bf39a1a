"""The worker library: one sans-IO engine driven by ``AsyncClient`` and ``Client``."""

from zps.client.async_client import AsyncClient
from zps.client.blocking import Client, Handle
from zps.client.engine import Engine
from zps.client.placement import Layout, Part, TableSpec, plan

__all__ = ["AsyncClient", "Client", "Engine", "Handle", "Layout", "Part", "TableSpec", "plan"]
