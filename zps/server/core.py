"""The server core (sans-IO): one handler per op, over the parts of the server's state.

``ServerCore.handle(peer, request, now)`` takes a validated ``Request`` and the routing
token it came with, and returns the replies to send now: its own, if it is ready, and any
others the request released (a sync round it closed answers the pulls waiting for it).
``tick(now)`` runs what time decides (dead workers, round timeouts). Nothing here does I/O
or imports asyncio or zmq; ``zps.server.app`` is the shell that feeds it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zps.codecs import CodecError
from zps.config import ServerConfig
from zps.errors import ProtocolError
from zps.protocol import PROTOCOL_VERSION, Op, Replicated, Reply, Request
from zps.protocol.batch import MAX_BATCH
from zps.server.access import Peer, check_access, scoped
from zps.server.handlers import DURABLE_OPS, Handlers
from zps.server.pushes import Pushes
from zps.server.reads import Reads
from zps.server.replica import Replica
from zps.server.replies import Outgoing, error_reply
from zps.server.rounds import SyncRounds
from zps.server.state import ServerState
from zps.server.stats import stats_info
from zps.server.waiters import ACKED, Condition, Deferred
from zps.store import (
    BadIds,
    BadOptimizer,
    BadRowSpec,
    RequestWindowError,
    Snapshot,
    TableConflict,
    TableMismatch,
    UnknownTable,
)

log = logging.getLogger("zps.server")

STANDBY_OPS = frozenset({Op.HELLO, Op.STATS, Op.HEARTBEAT, Op.BYE, Op.WATCH, Op.TABLES})
# Domain errors of the store and codecs, as wire codes.
ERROR_CODES: tuple[tuple[type[Exception], str], ...] = (
    (UnknownTable, "unknown_table"),
    (TableConflict, "conflict"),
    (TableMismatch, "shape_mismatch"),
    (BadOptimizer, "bad_header"),
    (BadRowSpec, "bad_header"),
    (BadIds, "bad_shape"),
    (RequestWindowError, "bad_header"),
)
DOMAIN_ERRORS: tuple[type[Exception], ...] = tuple(cls for cls, _ in ERROR_CODES)
REPLICA_ERRORS: tuple[type[Exception], ...] = (CodecError, *DOMAIN_ERRORS)
DEAD = "this client was declared dead (no heartbeat); send hello again"
LEFT = "this client said goodbye; send hello again"
SHUTDOWN = ("shutting_down", "the server is shutting down")


@dataclass(frozen=True, slots=True)
class Call:
    """One request being handled: where it came from and when."""

    peer: Any
    request: Request
    now: float
    key: str = ""  # with CURVE: the fingerprint of the key it came with


class ServerCore:
    """State and handlers of one server process (one shard)."""

    def __init__(self, config: ServerConfig, server_id: str) -> None:
        self.config = config
        self.state = ServerState.of(config, server_id)
        self.rounds = SyncRounds(self.state)
        self.pushes = Pushes(self.state, self.rounds)
        self.reads = Reads(self.state, self.rounds)
        self.replica = Replica(self.state, self.rounds)
        self.replication_info: Callable[[], dict[str, Any]] = lambda: {}
        self.checkpoint_info: Callable[[], dict[str, Any] | None] = lambda: None
        self.handlers = Handlers(self)
        self._out: list[Outgoing] = []

    # Names tests and the shell use.
    @property
    def store(self) -> Any:
        return self.state.store

    @property
    def counters(self) -> dict[str, int]:
        return self.state.counters

    @property
    def members(self) -> Any:
        return self.state.members

    @property
    def role(self) -> str:
        return self.state.role

    @property
    def epoch(self) -> int:
        return self.state.epoch

    @property
    def durable(self) -> bool:
        """Whether updates are acknowledged only once the standby holds them."""
        return self.config.replication == "sync" and self.replica.standby is not None

    # ------------------------------------------------------------ entry points

    def handle(self, peer: Any, request: Request, now: float,
               user: str | None = None) -> list[Outgoing]:
        """Handle one request; the replies to send now (its own if ready, and others).
        ``user`` is the CURVE user id it came with (None without CURVE: all allowed)."""
        state = self.state
        state.counters["requests"] += 1
        call = Call(peer, request, now)
        try:
            if user is not None:
                call = self._authorized(call, user)
                request = call.request  # its client id now scoped by the key
            if state.role == "standby" and request.op not in STANDBY_OPS:
                raise ProtocolError(
                    "not_primary",
                    f"this server is the hot standby of {self.config.standby_of}: it takes "
                    "requests only once it has taken over; send them to the primary")
            state.members.touch(request.client_id, now)
            result = self.handlers.table[request.op](call)
            if isinstance(result, Deferred):
                if request.op in DURABLE_OPS and self.durable:
                    result.conditions.append(Condition(ACKED, self.replica.acked_at_least()))
                self._defer(result)
            else:
                self._out.append(result)
        except ProtocolError as exc:
            self._out.append(self.error(peer, request.request_id, exc.code, str(exc)))
        except CodecError as exc:
            self._out.append(self.error(peer, request.request_id, exc.code, str(exc)))
        except DOMAIN_ERRORS as exc:
            code = next(c for cls, c in ERROR_CODES if isinstance(exc, cls))
            self._out.append(self.error(peer, request.request_id, code, str(exc)))
        return self.flush()

    def _authorized(self, call: Call, user: str) -> Call:
        """``call`` with its key, if the key's role allows it (else ``forbidden``), and
        its client id scoped by the key: no key can act for another key's client."""
        peer = Peer.of(user)
        try:
            check_access(peer, call.request)
        except ProtocolError:
            self.state.counters["forbidden"] += 1
            log.warning("refused %s from client %s (key %s, role %s)", call.request.op.value,
                        call.request.client_id, peer.key, peer.role)
            raise
        return Call(call.peer, scoped(call.request, peer), call.now, peer.key)

    def tick(self, now: float) -> list[Outgoing]:
        """Declare silent members dead, close timed-out rounds, let stale snapshots go."""
        self._reap(now)
        self.rounds.tick(now)
        self.replica.tick(now)
        if self.state.role == "primary":
            self._evict_stale()
        return self.flush()

    def _evict_stale(self) -> None:
        """Row tables with ``evict_after``: drop the stale rows of the next bounded scan
        (a numbered change, so the standby drops the same)."""
        store = self.state.store
        for table in list(store.row_tables()):
            stale = table.stale(self.state.clock())
            if stale.size:
                store.evict_rows(table.name, stale)

    def shutdown(self) -> list[Outgoing]:
        """Fail every reply still waiting (the server is stopping)."""
        self.state.waiters.fail_all(*SHUTDOWN)
        return self.flush()

    def promote(self, now: float) -> list[Outgoing]:
        """This standby takes over with the next epoch; answers the clients' watches."""
        self.replica.promote(now)
        return self.flush()

    @property
    def received_seq(self) -> int:
        """A standby's place in the primary's stream: the changes it applied, and the
        pieces of one it holds until its last piece comes."""
        return self.replica.received

    def apply_replicated(self, change: Replicated) -> None:
        """Apply one change of the primary's stream (``ProtocolError`` if it does not fit;
        store and codec errors are reported the same way)."""
        try:
            self.replica.apply(change)
        except REPLICA_ERRORS as exc:
            raise ProtocolError("bad_frames", f"change {change.seq}: {exc}") from None

    def install_snapshot(self, snapshot: Snapshot, adopt: bool = False) -> None:
        """Replace all state with ``snapshot`` (a standby catching up, or a restore)."""
        self.replica.install(snapshot, adopt)

    def extra_state(self) -> dict[str, Any]:
        return self.replica.extra_state()

    # ------------------------------------------------------------ replies

    def flush(self) -> list[Outgoing]:
        """Everything ready to send: replies released by the last changes, and failures."""
        waiters = self.state.waiters
        while waiters.ready or waiters.failed:
            ready, waiters.ready = waiters.ready, []
            for deferred in ready:
                self._out.append(self._built(deferred))
            failed, waiters.failed = waiters.failed, []
            for deferred, code, message in failed:
                self._out.append(self.error(deferred.peer, deferred.request_id, code, message))
        out, self._out = self._out, []
        return out

    def _defer(self, deferred: Deferred) -> None:
        if not deferred.conditions or all(c.ready() for c in deferred.conditions):
            self._out.append(self._built(deferred))  # the common case: no registry
        else:
            self.state.waiters.add(deferred)

    def _built(self, deferred: Deferred) -> Outgoing:
        try:
            reply, leases = deferred.build()
        except (ProtocolError, CodecError) as exc:
            return self.error(deferred.peer, deferred.request_id, exc.code, str(exc))
        except DOMAIN_ERRORS as exc:
            code = next(c for cls, c in ERROR_CODES if isinstance(exc, cls))
            return self.error(deferred.peer, deferred.request_id, code, str(exc))
        return Outgoing(deferred.peer, reply, leases)

    def reply(self, call: Call, info: dict[str, Any] | None = None) -> Outgoing:
        return Outgoing(call.peer, Reply(call.request.request_id,
                                         info={**self.state.info(), **(info or {})}))

    def error(self, peer: Any, request_id: int | None, code: str, message: str) -> Outgoing:
        self.state.counters["errors"] += 1
        log.debug("rejected request %s: %s: %s", request_id, code, message)
        return Outgoing(peer, error_reply(request_id, code, message, self.state.info()))

    def hello_info(self, client: str = "") -> dict[str, Any]:
        state, cfg = self.state, self.config
        return {
            "server_id": state.server_id,
            "protocol": PROTOCOL_VERSION,
            "mode": cfg.mode,
            "workers": cfg.workers,
            "quorum": cfg.quorum,
            "aggregate": str(self.rounds.rule),
            "lr_rule": cfg.lr_rule,
            "heartbeat_interval": cfg.heartbeat_interval,
            "liveness": cfg.liveness,
            "max_message_bytes": cfg.limits.max_message_bytes,
            "max_header_bytes": cfg.limits.max_header_bytes,
            "batch": MAX_BATCH,  # requests this server takes in one message
            "optimizer": cfg.optimizer,
            "role": state.role,
            "epoch": state.epoch,
            "pub": self.replica.pub_endpoint,
            "replication": cfg.replication,
            "next_id": state.ledger.top(client) + 1 if client else 0,
            **({"group": list(cfg.group)} if len(cfg.group) > 1 else {}),
        }

    def stats(self, now: float) -> dict[str, Any]:
        return stats_info(self, now)

    # ------------------------------------------------------------ membership

    def forget(self, client: str, why: str, now: float) -> None:
        """Remove a member (bye, or silent past the liveness deadline) from every barrier;
        replies it still has waiting fail, so a client that is in fact alive registers
        again and sends them once more."""
        state = self.state
        member = state.members.remove(client)
        if member is None:
            return
        if member.role == "standby":
            self.replica.detach(why)
            return
        log.info("%s %s %s (%d workers)", member.role, client, why,
                 len(state.members.workers()))
        state.departed.append({"id": client, "role": member.role, "state": why})
        state.last_read = {k: v for k, v in state.last_read.items() if k[1] != client}
        if member.role == "worker":
            self.rounds.leave(client, now)
            state.clocks.leave(client)
            state.rates.leave(client)
            state.waiters.wake_all()  # SSP bounds moved
        state.waiters.fail_client(client, "not_registered", LEFT if why == "left" else DEAD)

    def _reap(self, now: float) -> None:
        cfg = self.config
        deadline = now - cfg.heartbeat_interval * cfg.liveness
        standby_deadline = now - cfg.repl_interval * cfg.repl_liveness * 2
        for member in self.state.members.silent_since(max(deadline, standby_deadline)):
            limit = standby_deadline if member.role == "standby" else deadline
            if member.last_seen >= limit:
                continue
            self.state.counters["dead"] += 1
            self.forget(member.client_id, "declared dead (no heartbeat)", now)

