"""The zps server: a sans-IO core (handlers, push acceptance, rounds, reads, replica state,
waiters, stats) and the asyncio shell around it (ROUTER loop, publisher, follower)."""

from zps.server.app import Server
from zps.server.core import ServerCore

__all__ = ["Server", "ServerCore"]
