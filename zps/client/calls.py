"""The units of work of the client engine (sans-IO): calls, and their requests in flight."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from zps.client.plans import Arrays, Message
from zps.errors import ClosedError
from zps.protocol import Op, Reply

# States of a request in flight.
SENT = 0  # waiting for its reply
HELD = 1  # its server is handing over to the standby: resent after the takeover
REGISTERING = 2  # its server forgot this client: resent once hello is answered

Send = tuple[int, list[Any]]  # (endpoint index, frames)


@dataclass(slots=True, eq=False)
class Call:
    """One call of the API: its messages, the arrays its replies fill, and its outcome.

    ``finish`` runs on success before ``callback`` (which runs either way)."""

    op: Op
    messages: list[Message]
    out: Arrays = field(default_factory=dict)
    replies: list[Reply | None] = field(default_factory=list)
    left: int = 0
    error: BaseException | None = None
    done: bool = False
    delta: bool = False  # a delta pull: one at a time per client
    timeout: float | None = None  # per attempt (None: the client's)
    attempts: int | None = None  # (None: 1 + the client's retries)
    finish: Callable[[Call], Any] | None = None  # -> the call's value
    callback: Callable[[Call], None] | None = None
    value: Any = None
    started: float = 0.0  # when it was started (0: untimed)

    def result(self) -> Any:
        """What the call returns; raises the call's error if it failed."""
        if not self.done:
            raise ClosedError("the call has not finished")
        if self.error is not None:
            raise self.error
        return self.value

    def infos(self) -> list[dict[str, Any]]:
        """Each reply's info, in message order (stats, hello)."""
        return [r.info if r is not None else {} for r in self.replies]


@dataclass(slots=True, eq=False)
class Pending:
    """One request of a call in flight (or held), with its id kept across resends."""

    call: Call
    index: int  # which message of the call
    rid: int
    deadline: float = 0.0
    attempts_left: int = 0
    state: int = SENT
    endpoint: int = -1  # where it was last sent
    whole: bool = False  # a delta pull asking for whole parts
    registered: bool = False  # registered again once for it (a second time fails it)

    @property
    def message(self) -> Message:
        return self.call.messages[self.index]


def unreachable_message(address: str, op: Op, attempts: int, timeout: float) -> str:
    if op == Op.HELLO:
        return (f"could not reach a zps server at {address} within {timeout:g} s; start one "
                f"with `zps-server --bind {address}` or fix the address")
    return (f"no answer from the zps server at {address} to {op} after {attempts} tries of "
            f"{timeout:g} s; check that zps-server is running there and reachable")


def as_int(value: Any) -> int:
    """An integer field of a reply's info, or 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0

