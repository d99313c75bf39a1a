"""The exceptions zps raises, and the error codes that carry them across the wire.

A server never raises at a client: it answers with an error reply holding a code and a
sentence. The client turns that reply back into one of the classes below, so user code can
catch ``zps.ZpsError`` for everything or a subclass for the cases it can handle.
"""

from __future__ import annotations


class ZpsError(Exception):
    """Base class of every error zps raises."""


class ConfigError(ZpsError):
    """A configuration value is missing or wrong; the message says which and how to fix it."""


class ProtocolError(ZpsError):
    """A message broke the wire protocol (bad header, frames, dtype, size...).

    ``code`` is a short machine-readable name (see ``ERROR_CODES``).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class RemoteError(ZpsError):
    """A server answered a request with an error; ``code`` names the kind, ``server`` where."""

    def __init__(self, code: str, message: str, server: str = "") -> None:
        where = f" (from {server})" if server else ""
        super().__init__(f"{message}{where}")
        self.code = code
        self.server = server


class UnknownTableError(RemoteError, KeyError):
    """The named table does not exist on its server: call ``init`` first."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class ShapeMismatchError(RemoteError, ValueError):
    """An array's shape or dtype does not match the table it targets."""


class RejectedError(RemoteError):
    """The server refused the request (malformed, too large, not allowed in this state)."""


class ForbiddenError(RejectedError):
    """With CURVE on, this client's key has a role that may not do this (an observer key
    pushing, a worker key replicating, one key acting for another's client id)."""


class ServerUnreachable(ZpsError, TimeoutError):
    """No answer from a server before the deadline: it is down, unreachable, or overloaded."""


class ConnectionLost(ZpsError):
    """The server we were talking to went away or restarted and lost the state we relied on."""


class ClosedError(ZpsError):
    """The client or server was used after ``close()``."""


# Codes a server may put in an error reply, mapped to the client-side class.
ERROR_CODES: dict[str, type[RemoteError]] = {
    "bad_version": RejectedError,
    "bad_op": RejectedError,
    "bad_header": RejectedError,
    "bad_frames": RejectedError,
    "bad_dtype": ShapeMismatchError,
    "bad_shape": ShapeMismatchError,
    "bad_name": RejectedError,
    "too_large": RejectedError,
    "unknown_table": UnknownTableError,
    "shape_mismatch": ShapeMismatchError,
    "conflict": ShapeMismatchError,
    "not_registered": RejectedError,
    "duplicate_table": RejectedError,
    "shutting_down": RejectedError,
    "forbidden": ForbiddenError,
    "internal": RemoteError,
}


def remote_error(code: str, message: str, server: str = "") -> RemoteError:
    """Build the exception matching an error reply's ``code``."""
    cls = ERROR_CODES.get(code, RemoteError)
    return cls(code, message, server)
