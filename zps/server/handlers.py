"""The handlers table: one function per op (sans-IO).

Each handler validates its request completely before it changes anything, and returns
either a finished ``Outgoing`` reply or a ``Deferred`` one (conditions to wait for and how
to build the reply from the state at the moment it is sent).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from zps.errors import ProtocolError
from zps.protocol import Op, Reply
from zps.server.members import ROLES
from zps.server.replies import Outgoing
from zps.server.rowhandlers import RowHandlers
from zps.server.waiters import PROMOTED, Condition, Deferred
from zps.store import make_optimizer

if TYPE_CHECKING:
    from zps.server.core import Call, ServerCore

log = logging.getLogger("zps.server")

Handler = Callable[["Call"], "Outgoing | Deferred"]
# Updates (and inits) are acknowledged only once the standby holds them, with durable
# replication.
DURABLE_OPS = frozenset({Op.INIT, Op.PUSH, Op.PUSH_PULL, Op.INIT_ROWS, Op.PUSH_ROWS,
                         Op.PUSH_PULL_ROWS})
MAX_LAYOUT_SHARDS = 1 << 16


class Handlers:
    """The handlers of one server core, by op."""

    def __init__(self, core: ServerCore) -> None:
        self.core = core
        self.state = core.state
        self.table: dict[Op, Handler] = {
            Op.HELLO: self.hello,
            Op.INIT: self.init,
            Op.PUSH: self.push,
            Op.PULL: self.pull,
            Op.PUSH_PULL: self.push_pull,
            Op.HEARTBEAT: self.heartbeat,
            Op.STATS: self.stats,
            Op.BYE: self.bye,
            Op.SNAPSHOT: self.snapshot,
            Op.SNAPSHOT_CHUNK: self.snapshot_chunk,
            Op.ACK: self.ack,
            Op.WATCH: self.watch,
        }
        rows = RowHandlers(self)
        self.table.update({Op.INIT_ROWS: rows.init_rows, Op.PULL_ROWS: rows.pull_rows,
                           Op.PUSH_ROWS: self.push, Op.PUSH_PULL_ROWS: rows.push_pull_rows,
                           Op.TABLES: rows.tables})

    # ------------------------------------------------------------ membership

    def hello(self, call: Call) -> Outgoing:
        state, request = self.state, call.request
        role = request.options.get("role", "worker")
        if role not in ROLES:
            raise ProtocolError("bad_header", f"role {role!r} must be one of {ROLES}")
        cid = request.client_id
        group = self.core.config.group
        if len(group) > 1 and role != "standby" and request.options.get("group") != len(group):
            # One of a --procs group: the client is to place over all of it, and connect
            # to every process; nobody is registered by this answer.
            return self.core.reply(call, {**self.core.hello_info(), "regroup": True})
        if state.role == "standby":  # says what it is; registers nobody until it takes over
            return self.core.reply(call, self.core.hello_info(cid))
        known = state.members.get(cid)
        if known is not None and known.role != role:
            raise ProtocolError(
                "bad_header",
                f"client {cid} is registered as {known.role}; a role cannot change, connect "
                "with another client id")
        if role == "standby":
            self.core.replica.attach(cid, call.now)
            return self.core.reply(call, self.core.hello_info())
        if role == "worker":  # an observer may look at any subset of the servers
            self.check_layout(request.options.get("layout"))
        wanted, hint = _rank_option(request, "rank"), _rank_option(request, "rank_hint")
        _, new = state.members.add(cid, role, call.now, call.key)
        info = self.core.hello_info(cid)
        if role == "worker":
            self.core.rounds.bsp.join(cid)
            state.clocks.join(cid)
            info["rank"] = self._rank(cid, wanted, hint, request.options.get("layout"))
        if new:
            log.info("%s %s joined (%d workers)", role, cid, len(state.members.workers()))
        return self.core.reply(call, info)

    def _rank(self, cid: str, wanted: int | None, hint: int | None,
              layout: Any) -> int | None:
        """The first server assigns ranks; the others note the rank a worker holds."""
        ranks, live = self.state.ranks, {m.client_id for m in self.state.members.workers()}
        if isinstance(layout, list) and len(layout) == 3 and layout[2] != 0:
            if wanted is not None or hint is not None:
                ranks.note(cid, wanted if wanted is not None else hint)  # type: ignore[arg-type]
            return ranks.get(cid)
        rank = ranks.assign(cid, wanted, live, hint)
        other = ranks.holder(rank, live, cid)
        if other is not None:
            log.warning("worker %s was given rank %d, which worker %s holds too: two "
                        "workers train on one shard", cid, rank, other)
        elif hint is not None and rank != hint:
            log.warning("worker %s held rank %d, now taken: it is rank %d", cid, hint, rank)
        return rank

    def check_layout(self, layout: Any) -> None:
        """Every client must place tables over the same server list, in the same order,
        with the same chunk size; the first to say how fixes it for this server."""
        if layout is None:
            return
        if not (isinstance(layout, list) and len(layout) == 3
                and all(isinstance(x, int) and not isinstance(x, bool) for x in layout)
                and 0 <= layout[2] < layout[0] <= MAX_LAYOUT_SHARDS and layout[1] > 0):
            raise ProtocolError("bad_header", "option 'layout' must be [shards, chunk_bytes, "
                                              "this server's index]")
        state = self.state
        shards, chunk, shard = layout
        if state.layout is None:
            return  # fixed by the first init
        if [shards, chunk] != state.layout or shard != state.shard:
            raise ProtocolError(
                "conflict",
                f"this server is server {state.shard} of {state.layout[0]} (chunk_bytes "
                f"{state.layout[1]}) for the other workers, but this client has it as server "
                f"{shard} of {shards} (chunk_bytes {chunk}); give every worker the same "
                "--servers list in the same order, and the same --chunk-bytes")

    def heartbeat(self, call: Call) -> Outgoing:
        self.state.counters["heartbeats"] += 1
        if call.request.client_id not in self.state.members:
            raise ProtocolError("not_registered", "unknown client: send hello again")
        return self.core.reply(call)

    def bye(self, call: Call) -> Outgoing:
        self.core.forget(call.request.client_id, "left", call.now)
        return self.core.reply(call)

    def stats(self, call: Call) -> Outgoing:
        return self.core.reply(call, self.core.stats(call.now))

    # ------------------------------------------------------------ tables

    def init(self, call: Call) -> Outgoing | Deferred:
        state, request = self.state, call.request
        arrays = request.arrays()
        layout = request.options.get("layout")
        self.check_layout(layout)
        spec = request.options.get("optimizer") or self.core.config.optimizer
        wanted = make_optimizer(spec)  # validate before anything is created
        for name, array in arrays.items():  # check everything before creating anything
            if name in state.store:
                table = state.store.get(name)
                table.check(array.shape, array.dtype.name, "init")
                _check_same_optimizer(table, wanted.spec() if wanted else None)
        fresh = [name for name in arrays if name not in state.store]
        if fresh and layout is not None and state.layout is None:
            state.layout, state.shard = layout[:2], layout[2]
        for name in fresh:
            state.store.create(name, arrays[name], make_optimizer(spec))
            state.lead_table = state.lead_table or name
            log.info("table %s created: %s %s%s", name, arrays[name].dtype, arrays[name].shape,
                     f" with server-side {spec['name']}" if spec else "")
        names = list(arrays)
        return self.answer(call, [], lambda: self._tables(call, names, None, fresh))

    def push(self, call: Call) -> Outgoing | Deferred:
        accepted = self.core.pushes.accept(call.request, call.now)
        state = self.state
        bsp = self.core.rounds.bsp
        # Back-pressure (sync): a push is acknowledged once its round is the open one, so
        # a worker that only pushes never queues more than one round ahead (with durable
        # replication: once applied, so the standby can hold it).
        lag = 0 if self.core.durable else 1
        conditions = [Condition(key, _closed_at_least(bsp, key, target - lag))
                      for key, target in accepted.rounds.items()
                      if target and bsp.closed(key) < target - lag]

        def build() -> tuple[Reply, tuple[()]]:
            return Reply(call.request.request_id,
                         info={**state.info(), "seq": state.store.seq}), ()
        return self.answer(call, conditions, build)

    def pull(self, call: Call) -> Outgoing | Deferred:
        request = call.request
        names = list(request.names)
        for name in names:
            self.state.store.get(name)
        wish = self.core.reads.wish(request, names)
        self.state.counters["pulls"] += 1
        conditions = self.core.reads.conditions(request.client_id, names, {})
        return self.answer(call, conditions, lambda: self._tables(call, names, wish))

    def push_pull(self, call: Call) -> Outgoing | Deferred:
        request = call.request
        names = request.table_names()
        wish = self.core.reads.wish(request, names)  # checked before the push is applied
        accepted = self.core.pushes.accept(request, call.now)
        self.state.counters["pulls"] += 1
        conditions = self.core.reads.conditions(request.client_id, names, accepted.rounds)
        return self.answer(call, conditions, lambda: self._tables(call, names, wish))

    def _tables(self, call: Call, names: list[str], wish: Any,
                created: list[str] | None = None) -> Any:
        reply, leases = self.core.reads.reply(call.request, names, wish)
        if created is not None:
            reply.info["created"] = created
        return reply, leases

    def answer(self, call: Call, conditions: list[Condition],
                build: Callable[[], Any]) -> Outgoing | Deferred:
        """The reply now, if nothing needs waiting for (the common case: no registry),
        else a deferred one."""
        if not conditions and not (self.core.durable and call.request.op in DURABLE_OPS):
            reply, leases = build()
            return Outgoing(call.peer, reply, leases)
        return self._deferred(call, conditions, build)

    def _deferred(self, call: Call, conditions: list[Condition],
                  build: Callable[[], Any]) -> Deferred:
        return Deferred(call.peer, call.request.client_id, call.request.request_id,
                        conditions, build)

    # ------------------------------------------------------------ replication

    def snapshot(self, call: Call) -> Outgoing:
        return Outgoing(call.peer, self.core.replica.start_snapshot(call.request, call.now))

    def snapshot_chunk(self, call: Call) -> Outgoing:
        reply, leases = self.core.replica.chunk(call.request, call.now)
        return Outgoing(call.peer, reply, leases)

    def ack(self, call: Call) -> Outgoing:
        options = call.request.options
        self.core.replica.ack(call.request.client_id, options.get("seq"),
                              options.get("snapshot"))
        return self.core.reply(call)

    def watch(self, call: Call) -> Deferred:
        """Answered when this server is (or becomes) the primary: clients watch the
        standby so they switch the moment it takes over. One per client is kept."""
        state = self.state
        deferred = self._deferred(
            call, [Condition(PROMOTED, lambda: state.role == "primary")],
            lambda: (Reply(call.request.request_id,
                           info={**state.info(), **self.core.hello_info()}), ()))
        deferred.tag = "watch"
        return deferred


def _closed_at_least(bsp: Any, key: str, target: int) -> Callable[[], bool]:
    return lambda: bsp.closed(key) >= target


def _check_same_optimizer(table: Any, wanted: dict[str, Any] | None) -> None:
    held = table.optimizer.spec() if table.optimizer else None
    if held != wanted:
        raise ProtocolError(
            "conflict",
            f"init of {table.name!r} asks for optimizer {wanted} but the table has {held}; "
            "every worker must init a table the same way (pushes are gradients for a "
            "server-side optimizer, deltas otherwise)",
        )



def _rank_option(request: Any, key: str) -> int | None:
    value = request.options.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or not 0 <= value < 1 << 31):
        raise ProtocolError("bad_header", f"option {key!r} {value!r} must be an int >= 0")
    return value  # type: ignore[no-any-return]
