"""The zps server: an asyncio ROUTER shell around handlers, store and consistency."""

from zps.server.app import Server
from zps.server.core import ServerCore

__all__ = ["Server", "ServerCore"]
