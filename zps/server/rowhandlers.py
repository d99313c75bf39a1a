"""The handlers of row-table ops, and of ``tables`` (sans-IO).

``push_rows`` shares the dense push handler (push acceptance tells the kinds apart); the
others are here: creating a row table (idempotent, every worker may call it), pulling rows
(never creating any), a push and pull in one round trip, and describing the tables so a
client that never called ``init`` or ``init_rows`` can use them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from zps.consistency.aggregate import parse_rule
from zps.errors import ProtocolError
from zps.protocol import Reply
from zps.server.replies import Outgoing
from zps.server.rounds import FOLDED_RULES
from zps.server.waiters import Deferred
from zps.store.errors import BadRowSpec, TableConflict
from zps.store.rows import RowTable, parse_row_spec

if TYPE_CHECKING:
    from zps.server.core import Call
    from zps.server.handlers import Handlers

log = logging.getLogger("zps.server")

REPLY_ALLOWANCE = 64 << 10  # room for a reply's header


class RowHandlers:
    """Handlers of the row ops, over the same parts as the dense ones."""

    def __init__(self, handlers: Handlers) -> None:
        self.h = handlers
        self.core = handlers.core
        self.state = handlers.state

    def init_rows(self, call: Call) -> Outgoing | Deferred:
        state, request = self.state, call.request
        name = request.names[0]
        layout = request.options.get("layout")
        self.h.check_layout(layout)
        spec = parse_row_spec(request.options.get("spec"))
        if state.sync and parse_rule(state.config.aggregate).name not in FOLDED_RULES:
            raise BadRowSpec("row tables combine sync rounds by mean or weighted; this "
                             f"server aggregates by {state.config.aggregate}")
        created = name not in state.store
        if not created:
            table = state.store.table(name)
            if not isinstance(table, RowTable) or table.spec != spec:
                held = table.spec.to_wire() if isinstance(table, RowTable) else "a dense table"
                raise TableConflict(f"init_rows of {name!r} with {spec.to_wire()} does not "
                                    f"match the table's {held}; every worker must init a "
                                    "row table the same way")
        else:
            if layout is not None and state.layout is None:
                state.layout, state.shard = layout[:2], layout[2]
            state.store.create_rows(name, spec, layout[0] if layout else 1)
            state.lead_table = state.lead_table or name
            log.info("row table %s created: %s x %d, init %s%s", name, spec.dtype, spec.dim,
                     spec.init, f", {spec.optimizer.name}" if spec.optimizer else "")

        def build() -> tuple[Reply, tuple[()]]:
            table = state.store.rows(name)
            return Reply(request.request_id, info={
                **state.info(), "spec": spec.to_wire(), "created": created,
                "versions": {name: table.version}}), ()
        return self.h.answer(call, [], build)

    def _check_reply(self, name: str, ids: Any) -> None:
        """A pull's reply is built in one turn of the loop: bound it by the message size."""
        table = self.state.store.rows(name)
        size = ids.size * table.spec.dim * table.dtype.itemsize
        limit = self.state.config.limits.max_message_bytes - REPLY_ALLOWANCE
        if size > limit:
            raise ProtocolError("too_large", f"a pull of {ids.size} rows of {name!r} would "
                                             f"answer {size} bytes, more than {limit}; pull "
                                             "fewer ids at a time")

    def pull_rows(self, call: Call) -> Outgoing | Deferred:
        request = call.request
        name = request.names[0]
        ids = request.arrays()["ids"]
        self._check_reply(name, ids)
        self.state.counters["pulls"] += 1
        conditions = self.core.reads.conditions(request.client_id, [name], {})
        return self.h.answer(call, conditions,
                             lambda: self.core.reads.rows_reply(request, name, ids))

    def push_pull_rows(self, call: Call) -> Outgoing | Deferred:
        request = call.request
        name = request.names[0]
        pull = request.arrays()["pull"]
        self._check_reply(name, pull)  # (before the push is applied)
        accepted = self.core.pushes.accept(request, call.now)
        self.state.counters["pulls"] += 1
        conditions = self.core.reads.conditions(request.client_id, [name], accepted.rounds)
        return self.h.answer(call, conditions,
                             lambda: self.core.reads.rows_reply(request, name, pull))

    def tables(self, call: Call) -> Outgoing:
        """Every table this server holds: kind, dtype, shape, version (and a row table's
        settings), so a client can use them without having called init."""
        found: list[dict[str, Any]] = []
        for table in self.state.store.tables():
            entry = {"name": table.name, **table.describe()}
            if isinstance(table, RowTable):
                entry["spec"] = table.spec.to_wire()
            found.append(entry)
        return self.core.reply(call, {"tables": found, "layout": self.state.layout,
                                      "shard": self.state.shard})
