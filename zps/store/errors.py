"""What the store refuses, as domain errors: the server's handlers map them to wire codes.

They say what is wrong in one sentence; none of them changes any state.
"""

from __future__ import annotations

from zps.errors import ZpsError


class StoreError(ZpsError):
    """Base class of the store's refusals."""


class UnknownTable(StoreError, KeyError):
    """No table of that name on this server."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class TableMismatch(StoreError, ValueError):
    """An update's shape or dtype does not match its table."""


class TableConflict(StoreError, ValueError):
    """A table exists with another shape, dtype or optimizer than an init asks for."""


class BadOptimizer(StoreError, ValueError):
    """Server-side optimizer settings that are malformed or out of range."""


class RequestWindowError(StoreError, ValueError):
    """A request id too far above its client's watermark (more unfinished requests than
    the server keeps track of)."""


class BadRowSpec(StoreError, ValueError):
    """Row table settings (dim, dtype, init, optimizer, admission, eviction) that are
    malformed or out of range."""


class BadIds(StoreError, ValueError):
    """Row ids or row updates that do not fit their table (dtype, shape, count)."""
