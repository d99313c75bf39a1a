"""The server's handlers: one function per op, over the store and the consistency rules.

``ServerCore.handle`` takes a validated ``Request`` and returns a ``Reply`` or, when the
answer must wait (a sync round to close, or the slowest worker to catch up under SSP), a
coroutine producing the reply. It does no socket I/O; ``zps.server.app`` is the thin
asyncio shell that feeds it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import numpy as np

from zps.codecs import CODECS, Codec, Compressed, Encoded, add_scaled, check_parts, make_codec
from zps.config import ServerConfig, parse_mode
from zps.consistency import BspRounds, ClosedRound, SspClocks
from zps.consistency.aggregate import aggregate, parse_rule
from zps.consistency.rates import Rates
from zps.errors import ProtocolError
from zps.protocol import PROTOCOL_VERSION, EncodedMeta, Op, Reply, Request, TensorMeta
from zps.server.members import ROLES, Membership
from zps.server.replication import Replicated, snapshot_reply
from zps.store import DedupWindow, Store, Table, make_optimizer
from zps.store.snapshot import Snapshot, restore_store, take_snapshot

log = logging.getLogger("zps.server")

Result = Reply | Coroutine[Any, Any, Reply]
# A pushed update, its weight and its request id.
Payload = tuple["np.ndarray | Compressed", float, int]
STANDBY_OPS = frozenset({Op.HELLO, Op.STATS, Op.HEARTBEAT, Op.BYE, Op.WATCH})
DURABLE_OPS = frozenset({Op.INIT, Op.PUSH, Op.PUSH_PULL})
ACKED = "\x00acked"  # waiters for the standby's acknowledgement (not a table name)
DEPARTED_KEPT = 100  # members that left or died, listed in stats
DELTA_CACHE = 64  # lossy delta pulls encoded once and shared by the workers asking alike


class ServerCore:
    """State and handlers of one server process (one shard)."""

    def __init__(self, config: ServerConfig, server_id: str) -> None:
        self.config = config
        self.server_id = server_id
        self.kind, staleness = parse_mode(config.mode)
        self.rule = parse_rule(config.aggregate)
        self.store = Store(config.log_entries, config.log_bytes)
        self.dedup = DedupWindow()
        self.members = Membership()
        self.rounds: BspRounds[Payload] = BspRounds(
            config.workers, config.quorum or None, "fold" if config.late == "fold" else "drop")
        self.clocks = SspClocks(staleness)
        self.rates = Rates(config.lr_rule, config.lr_scale)
        # What each worker last read of each table: the round (sync) or version (others).
        self._read: dict[tuple[str, str], int] = {}
        # Per table: bytes in on the wire, in dense, out on the wire, out in dense.
        self._traffic: dict[str, list[int]] = {}
        self._delta_cache: dict[tuple[str, int, int, str], Compressed] = {}
        self._pull_codecs: dict[str, Codec] = {}  # pull codecs by name, built once
        # Sync pushes waiting in a round, (client, table, request id) -> round: recorded in
        # the dedup window only once applied, so a snapshot never claims them.
        self._in_rounds: dict[tuple[str, str, int], int] = {}
        self._round_opened: dict[str, float] = {}  # sync: when each open round got a push
        self._waiters: dict[str, list[tuple[Callable[[], bool], asyncio.Future[None]]]] = {}
        self._lead_table: str | None = None
        self._departed: deque[dict[str, str]] = deque(maxlen=DEPARTED_KEPT)
        self.counters: dict[str, int] = dict.fromkeys(
            ("requests", "errors", "pushes", "duplicates", "dropped", "pulls", "rounds",
             "timeouts", "heartbeats", "dead", "bytes_in", "bytes_out"), 0
        )
        # Replication: a standby mirrors its primary and refuses requests until it takes
        # over; a primary tracks its standby and what it has acknowledged.
        self.role = "standby" if config.standby_of else "primary"
        self.epoch = 1
        self.pub_endpoint = ""
        self.standby: str | None = None  # client id of the attached standby
        self.acked = 0  # the highest change number the standby holds
        self.replication_info: Callable[[], dict[str, Any]] = lambda: {}
        self._promoted: asyncio.Future[None] | None = None
        self.handlers: dict[Op, Callable[[Request], Result]] = {
            Op.HELLO: self.hello,
            Op.INIT: self.init,
            Op.PUSH: self.push,
            Op.PULL: self.pull,
            Op.PUSH_PULL: self.push_pull,
            Op.HEARTBEAT: self.heartbeat,
            Op.STATS: self.stats,
            Op.BYE: self.bye,
            Op.SNAPSHOT: self.snapshot,
            Op.ACK: self.ack,
            Op.WATCH: self.watch,
        }

    @property
    def sync(self) -> bool:
        return self.kind == "sync"

    @property
    def _rounds_may_skip(self) -> bool:
        """Whether a sync round can close without some live worker (then pushes can be late)."""
        return bool(self.config.quorum or self.config.round_timeout)

    def handle(self, request: Request) -> Result:
        """Dispatch ``request`` to its handler. Raises ``ProtocolError`` for bad requests."""
        self.counters["requests"] += 1
        if self.role == "standby" and request.op not in STANDBY_OPS:
            raise ProtocolError(
                "not_primary",
                f"this server is the hot standby of {self.config.standby_of}: it takes "
                "requests only once it has taken over; send them to the primary",
            )
        self.members.touch(request.client_id, time.monotonic())
        result = self.handlers[request.op](request)
        if request.op in DURABLE_OPS and self.durable:
            return self._once_replicated(result)
        return result

    @property
    def durable(self) -> bool:
        """Whether updates are acknowledged only once the standby holds them."""
        return self.config.replication == "sync" and self.standby is not None

    async def _once_replicated(self, result: Result) -> Reply:
        """``result``'s reply, sent once the standby holds every change made so far."""
        reply = result if isinstance(result, Reply) else await result
        seq = self.store.seq
        return await self._when_ready(
            [(ACKED, lambda: self.standby is None or self.acked >= seq)], lambda: reply)

    # ------------------------------------------------------------ membership

    def hello(self, request: Request) -> Reply:
        role = request.options.get("role", "worker")
        if role not in ROLES:
            raise ProtocolError("bad_header", f"role {role!r} must be one of {ROLES}")
        if self.role == "standby":  # says what it is; registers nobody until it takes over
            return self._reply(request, info=self._hello_info())
        if role == "standby":
            return self._attach_standby(request)
        known = self.members.get(request.client_id)
        if known is not None and known.role != role:
            raise ProtocolError(
                "bad_header",
                f"client {request.client_id} is registered as {known.role}; a role cannot "
                "change, connect with another client id",
            )
        _, new = self.members.add(request.client_id, role, time.monotonic())
        if role == "worker":
            self.rounds.join(request.client_id)
            self.clocks.join(request.client_id)
        if new:
            workers = len(self.members.workers())
            log.info("%s %s joined (%d workers)", role, request.client_id, workers)
        return self._reply(request, info=self._hello_info())

    def _hello_info(self) -> dict[str, Any]:
        return {
            "server_id": self.server_id,
            "protocol": PROTOCOL_VERSION,
            "mode": self.config.mode,
            "workers": self.config.workers,
            "quorum": self.config.quorum,
            "aggregate": str(self.rule),
            "lr_rule": self.config.lr_rule,
            "heartbeat_interval": self.config.heartbeat_interval,
            "liveness": self.config.liveness,
            "max_message_bytes": self.config.limits.max_message_bytes,
            "optimizer": self.config.optimizer,
            "role": self.role,
            "epoch": self.epoch,
            "pub": self.pub_endpoint,
            "replication": self.config.replication,
        }

    # ------------------------------------------------------------ replication

    def _attach_standby(self, request: Request) -> Reply:
        cid = request.client_id
        if self.standby not in (None, cid):
            log.warning("standby %s replaced by %s", self.standby, cid)
            self.members.remove(self.standby)
            self.acked = 0  # durable waits now wait for the new standby
        self.members.add(cid, "standby", time.monotonic())
        if self.standby != cid:
            log.info("standby %s attached (replication %s)", cid, self.config.replication)
        self.standby = cid
        return self._reply(request, info=self._hello_info())

    def _require_standby(self, request: Request) -> None:
        if request.client_id == self.standby:
            return
        if self.standby is not None:
            raise ProtocolError("replaced", f"standby {self.standby} has taken this one's "
                                            "place")
        raise ProtocolError("not_registered", "only the attached standby may ask for this: "
                                              "send hello with role 'standby'")

    def snapshot(self, request: Request) -> Reply:
        """A consistent copy of every table, at the current change number."""
        self._require_standby(request)
        snap = take_snapshot(self.store, self.epoch, self.extra_state())
        return snapshot_reply(request.request_id, snap, {"sid": self.server_id})

    def ack(self, request: Request) -> Reply:
        """The standby holds every change up to ``seq``."""
        self._require_standby(request)
        seq = request.options.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise ProtocolError("bad_header", "option 'seq' must be an int >= 0")
        self.acked = min(seq, self.store.seq)  # after a fresh snapshot it may go back
        self._wake(ACKED)
        return self._reply(request)

    def watch(self, request: Request) -> Result:
        """Answered when this server is (or becomes) the primary: clients watch the
        standby so they switch the moment it takes over."""
        if self.role == "primary":
            return self._reply(request, info=self._hello_info())
        if self._promoted is None:
            self._promoted = asyncio.get_running_loop().create_future()
        promoted = self._promoted

        async def answer() -> Reply:
            await promoted
            return self._reply(request, info=self._hello_info())

        return answer()

    def extra_state(self) -> dict[str, Any]:
        """What a snapshot or checkpoint keeps besides the tables."""
        return {"dedup": self.dedup.export(), "mode": self.config.mode,
                "rounds": {t.name: self.rounds.closed(t.name) for t in self.store}}

    def install_snapshot(self, snapshot: Snapshot) -> None:
        """Replace all state with ``snapshot`` (a standby catching up, or a restore)."""
        self.store = restore_store(snapshot, self.config.log_entries, self.config.log_bytes)
        self.epoch = snapshot.epoch
        try:
            self.dedup = DedupWindow.restore(snapshot.extra.get("dedup", []))
        except (TypeError, ValueError) as exc:
            raise ProtocolError("bad_frames", f"snapshot dedup state: {exc}") from None
        self._lead_table = next(iter(t.name for t in self.store), None)
        rounds = snapshot.extra.get("rounds", {})
        for table in self.store:
            closed = rounds.get(table.name) if isinstance(rounds, dict) else None
            self.rounds.set_closed(table.name, closed if isinstance(closed, int)
                                   else table.version)

    def apply_replicated(self, change: Replicated) -> None:
        """Apply one change from the primary's stream exactly as the primary did."""
        if change.kind == "create":
            data = change.update if isinstance(change.update, np.ndarray) else None
            if data is None:
                raise ProtocolError("bad_frames", "a created table must come dense")
            self.store.create(change.table, data, make_optimizer(change.optimizer))
            self._lead_table = self._lead_table or change.table
        else:
            table = self.store.get(change.table)
            shape = (change.update.encoded.shape if isinstance(change.update, Compressed)
                     else change.update.shape)
            if tuple(shape) != table.data.shape or change.version != table.version + 1:
                raise ProtocolError("bad_frames", f"change {change.seq} does not fit table "
                                                  f"{change.table!r} here")
            self.store.apply(change.table, change.update, change.scale, change.requests)
            if self.sync:
                self.rounds.set_closed(change.table, self.rounds.closed(change.table) + 1)
        for cid, rid in change.requests:
            self.dedup.record((cid, change.table), rid)
        self.epoch = change.epoch

    def promote(self) -> None:
        """Take over as primary with the next epoch. Sync rounds wait for ``--workers``
        workers to register again, or at most the liveness window (a worker that died
        with the old primary must not hold the rest forever)."""
        self.role = "primary"
        self.epoch += 1
        if self.sync and any(t.version for t in self.store):
            grace = self.config.heartbeat_interval * self.config.liveness
            asyncio.get_running_loop().call_later(grace, self.start_rounds)
        if self._promoted is not None and not self._promoted.done():
            self._promoted.set_result(None)  # answers the clients' watches

    def start_rounds(self) -> None:
        """Let sync rounds close with whoever is registered."""
        self._apply_closed(self.rounds.start())

    def bye(self, request: Request) -> Reply:
        self.forget(request.client_id, "left")
        return self._reply(request)

    def heartbeat(self, request: Request) -> Reply:
        self.counters["heartbeats"] += 1
        if request.client_id not in self.members:
            raise ProtocolError("not_registered", "unknown client: send hello again")
        return self._reply(request)

    def forget(self, client_id: str, why: str) -> None:
        """Remove a member (bye, or silent past the liveness deadline) from every barrier."""
        member = self.members.remove(client_id)
        if member is None:
            return
        if member.role == "standby":
            self.standby = None
            log.warning("standby %s %s: updates are acknowledged without a standby until "
                        "one attaches", client_id, why)
            self._wake(ACKED)
            return
        log.info("%s %s %s (%d workers)", member.role, client_id, why, len(self.members.workers()))
        self._departed.append({"id": client_id, "role": member.role, "state": why})
        self._read = {k: v for k, v in self._read.items() if k[1] != client_id}
        if member.role == "worker":
            self._in_rounds = {k: v for k, v in self._in_rounds.items() if k[0] != client_id}
            self._apply_closed(self.rounds.leave(client_id))
            self.clocks.leave(client_id)
            self.rates.leave(client_id)
            for key in list(self._waiters):
                self._wake(key)

    def reap(self, now: float) -> None:
        """Declare dead every member silent for heartbeat_interval x liveness; close rounds
        open longer than the round timeout."""
        deadline = now - self.config.heartbeat_interval * self.config.liveness
        standby_deadline = now - self.config.repl_interval * self.config.repl_liveness * 2
        for member in self.members.silent_since(max(deadline, standby_deadline)):
            limit = standby_deadline if member.role == "standby" else deadline
            if member.last_seen >= limit:
                continue
            self.counters["dead"] += 1
            self.forget(member.client_id, "declared dead (no heartbeat)")
        timeout = self.config.round_timeout
        if timeout > 0:
            for key, opened in list(self._round_opened.items()):
                if now - opened >= timeout:
                    self.counters["timeouts"] += 1
                    self._apply_closed(self.rounds.close_now(key))

    # ------------------------------------------------------------ tables

    def init(self, request: Request) -> Reply:
        arrays = request.arrays()
        optimizer_spec = request.options.get("optimizer") or self.config.optimizer
        wanted = make_optimizer(optimizer_spec)  # validate before anything is created
        fresh = [name for name in arrays if name not in self.store]
        for name, array in arrays.items():  # check everything before creating anything
            if name in self.store:
                table = self.store.get(name)
                self._check_same(table, array, "init")
                self._check_same_optimizer(table, wanted.spec() if wanted else None)
        for name in fresh:
            self.store.create(name, arrays[name], make_optimizer(optimizer_spec))
            self._lead_table = self._lead_table or name
            log.info("table %s created: %s %s%s", name, arrays[name].dtype, arrays[name].shape,
                     f" with server-side {optimizer_spec['name']}" if optimizer_spec else "")
        return self._tables_reply(request, [self.store.get(n) for n in arrays])

    def _check_same_optimizer(self, table: Table, wanted: dict[str, Any] | None) -> None:
        held = table.optimizer.spec() if table.optimizer else None
        if held != wanted:
            raise ProtocolError(
                "conflict",
                f"init of {table.name!r} asks for optimizer {wanted} but the table has {held}; "
                "every worker must init a table the same way (pushes are gradients for a "
                "server-side optimizer, deltas otherwise)",
            )

    def push(self, request: Request) -> Result:
        targets = self._accept_push(request)
        # Back-pressure (sync): a push is acknowledged once its round is the open one, so
        # a worker that only pushes never queues more than one round ahead.
        ready = self._round_is_applied if self.durable else self._round_is_open
        waits = [(key, ready(key, target)) for key, target in targets]
        waits = [(key, ready) for key, ready in waits if not ready()]
        ack = self._reply(request, info={"seq": self.store.seq})
        if not waits:
            return ack
        return self._when_ready(waits, lambda: ack)

    def _round_is_open(self, key: str, target: int) -> Callable[[], bool]:
        return lambda: self.rounds.closed(key) >= target - 1

    def _round_is_applied(self, key: str, target: int) -> Callable[[], bool]:
        return lambda: self.rounds.closed(key) >= target

    def pull(self, request: Request) -> Result:
        tables = [self.store.get(name) for name in request.names]
        wish = self._pull_wish(request, tables)
        self.counters["pulls"] += 1
        return self._answer_when_readable(request, tables, wish)

    def push_pull(self, request: Request) -> Result:
        names = [m.name for m in request.tensors] + [m.name for m in request.encoded]
        tables = [self.store.get(name) for name in names]
        wish = self._pull_wish(request, tables)
        self._accept_push(request)
        self.counters["pulls"] += 1
        return self._answer_when_readable(request, tables, wish)

    def _pull_wish(self, request: Request, tables: list[Table]) -> PullWish:
        """A pull's options, checked: the version of each table the client already holds
        (``have``) and the codec for the change since then (``pull_codec``)."""
        have = request.options.get("have", {})
        names = {t.name for t in tables}
        if not isinstance(have, dict) or not all(
                isinstance(k, str) and k in names and isinstance(v, int)
                and not isinstance(v, bool) and v >= 0 for k, v in have.items()):
            raise ProtocolError("bad_header", "option 'have' must map tables of this request "
                                              "to the versions the client holds (ints >= 0)")
        spec = request.options.get("pull_codec", "none")
        codec = self._pull_codecs.get(spec) if isinstance(spec, str) else None
        if codec is None and isinstance(spec, str) and len(self._pull_codecs) < 64:
            try:
                codec = self._pull_codecs[spec] = make_codec(spec)
            except ValueError:
                codec = None
        if codec is None:
            raise ProtocolError("bad_header", f"unknown pull codec {spec!r}; known: "
                                              f"{', '.join(CODECS)}")
        return PullWish(have, codec, spec)  # type: ignore[arg-type]

    def _accept_push(self, request: Request) -> list[tuple[str, int]]:
        """Validate a push completely, then apply it (async, SSP) or add it to its round.

        Returns, in sync mode, the round each table's update went into (0: dropped).
        """
        dense_arrays = request.arrays()
        for name, dense in dense_arrays.items():
            self._check_same(self.store.get(name), dense, "push")
        arrays: dict[str, np.ndarray | Compressed] = dict(dense_arrays)
        for name, (meta, parts) in request.encoded_parts().items():
            arrays[name] = self._compressed(self.store.get(name), meta, parts)
        cid = request.client_id
        loss = _number_option(request, "loss", None)
        weight = _number_option(request, "weight", 1.0)
        if weight is None or weight < 0:
            raise ProtocolError("bad_header", "option 'weight' must be >= 0")
        rid = request.request_id
        # A retry of an applied push changes nothing (per table: a failover may have lost
        # the part of a push whose sync round had not closed yet). A retry of one still
        # waiting in its round waits for that round.
        waiting = [(n, self._in_rounds[(cid, n, rid)]) for n in arrays
                   if (cid, n, rid) in self._in_rounds]
        fresh = {n: a for n, a in arrays.items() if not self.dedup.seen((cid, n), rid)
                 and (cid, n, rid) not in self._in_rounds}
        if not fresh:
            self.counters["duplicates"] += 1
            return waiting
        if self.kind != "async" and cid not in self.rounds.members:
            raise ProtocolError(
                "not_registered",
                f"client {cid} is not a registered worker of this {self.config.mode} job: "
                "send hello with role 'worker' first (it may have been declared dead)",
            )
        if not self.sync:
            for name in fresh:
                self.dedup.record((cid, name), rid)
        self.counters["pushes"] += 1
        wire = [m.nbytes for m in request.tensors] + [
            sum(n for _, n in m.parts) for m in request.encoded]
        self.counters["bytes_in"] += sum(wire)
        for name, update, nbytes in zip(arrays, arrays.values(), wire, strict=True):
            traffic = self._traffic.setdefault(name, [0, 0, 0, 0])
            traffic[0] += nbytes
            traffic[1] += self.store.get(name).data.nbytes if isinstance(update, Compressed) \
                else nbytes
        if self.sync:
            return waiting + [(name, self._push_to_round(name, cid, (array, weight, rid)))
                              for name, array in fresh.items()]
        self.rates.observe(cid, loss)
        for name, array in fresh.items():
            table = self.store.get(name)
            staleness = table.version - self._read.get((name, cid), table.version)
            self.store.apply(name, array, self.rates.eta(cid, staleness), ((cid, rid),))
            if self.kind == "ssp":
                self.clocks.tick(name, cid)
                self._wake(name)
        return []

    def _compressed(self, table: Table, meta: EncodedMeta,
                    parts: tuple[np.ndarray, ...]) -> Compressed:
        """A compressed push for ``table``, checked completely (``ProtocolError``)."""
        if table.data.shape != meta.shape or table.data.dtype.name != meta.dtype:
            raise ProtocolError(
                "shape_mismatch",
                f"push of {table.name!r} with {meta.dtype}{list(meta.shape)} does not match "
                f"the table's {table.data.dtype}{list(table.data.shape)}",
            )
        try:
            codec = make_codec(meta.codec)
        except ValueError:
            raise ProtocolError("bad_header", f"unknown codec {meta.codec!r}; known: "
                                              f"{', '.join(CODECS)}") from None
        encoded = Encoded(meta.codec, meta.shape, meta.dtype, parts, meta.params)
        check_parts(codec, encoded)
        return Compressed(codec, encoded)

    def _push_to_round(self, name: str, cid: str, payload: Payload) -> int:
        # An update is based on the newest round its worker knows of: the last one it read,
        # or the one its own previous push went into.
        read = self._read.get((name, cid))
        pushed = self.rounds.last_round(name, cid)
        # A worker this server has seen neither read nor push (this server took over or
        # restored since) is not late: its update is based on what it saw elsewhere.
        known = read is not None or pushed > 0
        based_on = max(read or 0, pushed) if self._rounds_may_skip and known else None
        target, closed = self.rounds.push(name, cid, payload, based_on)
        if target == 0:
            self.counters["dropped"] += 1
            self.dedup.record((cid, name), payload[2])  # handled: a retry is dropped too
        else:
            self._in_rounds[(cid, name, payload[2])] = target
        self._apply_closed(closed)
        if self.rounds.open_count(name) and name not in self._round_opened:
            self._round_opened[name] = time.monotonic()
        return target

    def _check_same(self, table: Table, array: np.ndarray, what: str) -> None:
        if table.data.shape != array.shape or table.data.dtype != array.dtype:
            code = "conflict" if what == "init" else "shape_mismatch"
            raise ProtocolError(
                code,
                f"{what} of {table.name!r} with {array.dtype}{list(array.shape)} does not match "
                f"the table's {table.data.dtype}{list(table.data.shape)}",
            )

    # ------------------------------------------------------------ sync rounds

    def _apply_closed(self, closed: list[ClosedRound[Payload]]) -> None:
        for done in closed:
            requests = tuple((m, p[2]) for m, p in zip(done.members, done.payloads,
                                                         strict=True))
            for member, rid in requests:  # applied now: in the window snapshots carry
                self._in_rounds.pop((member, done.key, rid), None)
                self.dedup.record((member, done.key), rid)
            self.store.apply(done.key, self._combine(done.key, done.payloads), 1.0, requests)
            self.counters["rounds"] += 1
            self._round_opened.pop(done.key, None)
            if self.rounds.open_count(done.key):
                self._round_opened[done.key] = time.monotonic()
            self._wake(done.key)
            if done.missing and done.key == self._lead_table:
                log.info("round %d closed without %s", done.round, ", ".join(done.missing))
            if done.key == self._lead_table and done.round % self.config.log_every_rounds == 0:
                log.info(
                    "round %d applied (seq %d, %d workers)",
                    done.round, self.store.seq, len(self.rounds.members),
                )

    def _combine(self, key: str, payloads: tuple[Payload, ...]) -> np.ndarray | Compressed:
        """One round's update: by the aggregation rule, decoding compressed pushes (for the
        mean, straight into the sum, block by block)."""
        updates = [p[0] for p in payloads]
        if len(updates) == 1 and self.rule.name != "weighted":
            return updates[0]
        if self.rule.name == "mean" and any(isinstance(u, Compressed) for u in updates):
            total = np.zeros_like(self.store.get(key).data)
            for update in updates:
                if isinstance(update, Compressed):
                    update.add_into(total, 1.0 / len(updates))
                else:
                    total += update * np.asarray(1.0 / len(updates), total.dtype)
            return total
        dense = [u.dense() if isinstance(u, Compressed) else u for u in updates]
        return aggregate(self.rule, dense, [p[1] for p in payloads])

    # ------------------------------------------------------------ answering reads

    def _readable(self, key: str, cid: str) -> Callable[[], bool]:
        """The condition under which ``cid`` may read table ``key`` now."""
        if self.sync:
            target = self.rounds.last_round(key, cid)
            return lambda: self.rounds.closed(key) >= target
        if self.kind == "ssp":
            return lambda: cid not in self.clocks.members or self.clocks.may_read(key, cid)
        return lambda: True

    def _answer_when_readable(self, request: Request, tables: list[Table],
                              wish: PullWish | None = None) -> Result:
        waits = [(t.name, self._readable(t.name, request.client_id)) for t in tables]
        if all(ready() for _, ready in waits):
            return self._tables_reply(request, tables, wish)
        return self._when_ready(waits, lambda: self._tables_reply(request, tables, wish))

    async def _when_ready(
        self, waits: list[tuple[str, Callable[[], bool]]], answer: Callable[[], Reply]
    ) -> Reply:
        """``answer()`` once every condition holds at the same moment."""
        loop = asyncio.get_running_loop()
        while pending := [(key, ready) for key, ready in waits if not ready()]:
            key, ready = pending[0]
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.setdefault(key, []).append((ready, future))
            await future
        return answer()

    def _wake(self, key: str) -> None:
        waiting = self._waiters.get(key)
        if not waiting:
            return
        still = []
        for ready, future in waiting:
            if future.done():
                continue
            if ready():
                future.set_result(None)
            else:
                still.append((ready, future))
        self._waiters[key] = still

    # ------------------------------------------------------------ stats and replies

    def stats(self, request: Request) -> Reply:
        now = time.monotonic()
        lead = self._lead_table or ""
        info = {
            **self._hello_info(),
            "seq": self.store.seq,
            "replica": {"standby": self.standby, "acked": self.acked,
                        "lag": self.store.seq - self.acked if self.standby else None,
                        **self.replication_info()},
            "counters": dict(self.counters),
            "tables": [
                {
                    "name": t.name,
                    "dtype": t.data.dtype.name,
                    "shape": list(t.data.shape),
                    "version": t.version,
                    "copies": t.copies,
                    **self._traffic_stats(t.name),
                    "rounds": self.rounds.closed(t.name),
                    "waiting_for": list(self.rounds.pending(t.name)) if self.sync else [],
                    "optimizer": t.optimizer.spec() if t.optimizer else None,
                }
                for t in self.store
            ],
            "members": [
                {
                    "id": m.client_id,
                    "role": m.role,
                    "state": "live",
                    "age": round(now - m.joined_at, 3),
                    "silent": round(now - m.last_seen, 3),
                    "clock": (self.rounds.last_round(lead, m.client_id) if self.sync
                              else self.clocks.clock(lead, m.client_id)),
                    "straggles": self.rounds.straggles[m.client_id],
                    "dropped": self.rounds.dropped[m.client_id],
                }
                for m in self.members
            ],
            "departed": list(self._departed),
        }
        return self._reply(request, info=info)

    def _traffic_stats(self, name: str) -> dict[str, Any]:
        wire_in, dense_in, wire_out, dense_out = self._traffic.get(name, [0, 0, 0, 0])
        return {"bytes_in": wire_in, "bytes_out": wire_out,
                "compression": round(dense_in / wire_in, 3) if wire_in else 1.0,
                "pull_compression": round(dense_out / wire_out, 3) if wire_out else 1.0}

    def _reply(self, request: Request, info: dict[str, Any] | None = None) -> Reply:
        return Reply(request.request_id,
                     info={"sid": self.server_id, "epoch": self.epoch, **(info or {})})

    def _tables_reply(self, request: Request, tables: list[Table],
                      wish: PullWish | None = None) -> Reply:
        """The tables' values, or for a delta pull the change since the version the client
        holds (``info["delta"]`` says, per table, the base version and the steps that turn
        it into the current value; a table missing there is sent whole)."""
        dense: list[tuple[TensorMeta, np.ndarray]] = []
        encoded: list[tuple[EncodedMeta, Encoded]] = []
        deltas: dict[str, list[Any]] = {}
        for t in tables:
            steps = self._delta(t, wish) if wish and t.name in wish.have else None
            if steps is None:
                dense.append((TensorMeta.of(t.name, t.data), t.data))
                sent = t.data.nbytes
            else:
                plan, sent = [], 0
                for update, scale in steps:
                    if isinstance(update, Compressed):
                        enc = update.encoded
                        encoded.append((_encoded_meta(t.name, enc), enc))
                        plan.append(["z", len(encoded) - 1, scale])
                        sent += enc.nbytes
                    else:
                        dense.append((TensorMeta.of(t.name, update), update))
                        plan.append(["d", len(dense) - 1, scale])
                        sent += update.nbytes
                deltas[t.name] = [wish.have[t.name], plan]  # type: ignore[union-attr]
            self.counters["bytes_out"] += sent
            traffic = self._traffic.setdefault(t.name, [0, 0, 0, 0])
            traffic[2] += sent
            traffic[3] += t.data.nbytes
        if request.client_id in self.members:  # what it now holds: its next push's base
            for t in tables:
                self._read[(t.name, request.client_id)] = (
                    self.rounds.closed(t.name) if self.sync else t.version)
        info: dict[str, Any] = {"sid": self.server_id, "epoch": self.epoch,
                                "versions": {t.name: t.version for t in tables}}
        if deltas:
            info["delta"] = deltas
        return Reply(
            request.request_id,
            tensors=tuple(m for m, _ in dense),
            info=info,
            buffers=(*(a for _, a in dense), *(p for _, e in encoded for p in e.parts)),
            encoded=tuple(m for m, _ in encoded),
        )

    def _delta(self, table: Table, wish: PullWish) -> list[tuple[Any, float]] | None:
        """What turns the client's version of ``table`` into the current one, as a list of
        (update, scale) steps, or None when sending the whole table is better (the log no
        longer reaches back, or the change would not be smaller)."""
        base = wish.have[table.name]
        if base == table.version:
            return []
        changes = self.store.table_changes(table.name, base)
        if changes is None:
            return None
        full = table.data.nbytes
        exact = [(c.update, c.scale) for c in changes]
        exact_bytes = sum(c.update.nbytes for c in changes)
        if wish.codec.lossless or (len(changes) == 1 and isinstance(changes[0].update,
                                                                    Compressed)):
            return exact if exact_bytes < full else None  # replayed bit for bit
        key = (table.name, base, table.version, wish.spec)
        cached = self._delta_cache.get(key)
        if cached is None:
            total = np.zeros_like(table.data)
            for update, scale in exact:
                add_scaled(total, update, scale)
            cached = Compressed(wish.codec, wish.codec.encode(np, total))
            if len(self._delta_cache) >= DELTA_CACHE:
                self._delta_cache.clear()
            self._delta_cache[key] = cached
        return [(cached, 1.0)] if cached.nbytes < full else None

    def cancel_waiters(self) -> None:
        """Fail every pull still waiting (the server is shutting down)."""
        for waiting in self._waiters.values():
            for _, future in waiting:
                if not future.done():
                    future.set_exception(
                        ProtocolError("shutting_down", "the server is shutting down")
                    )
        self._waiters.clear()


@dataclass(frozen=True, slots=True)
class PullWish:
    """What a pull asks for beyond the tables: the versions the client holds, and the
    codec for the change since then."""

    have: dict[str, int]
    codec: Codec
    spec: str  # the codec as named in the request (cache key)


def _encoded_meta(name: str, enc: Encoded) -> EncodedMeta:
    return EncodedMeta(name, enc.codec, enc.params, enc.dtype, enc.shape,
                       tuple((p.dtype.name, int(p.nbytes)) for p in enc.parts))


def _number_option(request: Request, key: str, default: float | None) -> float | None:
    value = request.options.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProtocolError("bad_header", f"option {key!r} must be a finite number")
    return float(value)
