"""What the server core hands its shell to send (sans-IO).

The core never touches a socket: every call returns ``Outgoing`` replies, each with the
routing token its request came with. A reply may carry a table's live buffer zero-copy;
its ``leases`` name those frames and what holds them, and the shell, once it has queued
the frames, pins each holder with the send's tracker so the buffer is not written while
ZeroMQ still reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from zps.protocol import Reply
from zps.store import Reader


class Holder(Protocol):
    """Something whose buffer must not change while a reader reads it."""

    def pin(self, reader: Reader) -> None: ...


@dataclass(frozen=True, slots=True)
class Lease:
    """Frame ``frame`` of a reply's buffers is ``holder``'s live buffer."""

    frame: int
    holder: Holder


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A reply for the peer ``peer`` (the shell's routing token)."""

    peer: Any
    reply: Reply
    leases: tuple[Lease, ...] = ()


def error_reply(request_id: int | None, code: str, message: str,
                info: dict[str, Any]) -> Reply:
    return Reply(request_id, info=info, error=(code, message))
