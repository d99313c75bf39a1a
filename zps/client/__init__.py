"""The worker library: ``AsyncClient`` for asyncio code and the blocking ``Client``."""

from zps.client.async_client import AsyncClient
from zps.client.blocking import Client
from zps.client.placement import Layout, Part, TableSpec, plan

__all__ = ["AsyncClient", "Client", "Layout", "Part", "TableSpec", "plan"]
