"""Replica state (sans-IO): a primary's standby, snapshots sent in chunks, a standby's
copy, and the takeover.

On a primary: which standby is attached, what it has acknowledged, and the snapshot it
is reading. A snapshot is frozen, not copied: the tables' buffers are pinned (updates
write elsewhere meanwhile) and the standby reads them a bounded chunk at a time, zero-copy;
the hold ends when the standby acknowledges the snapshot's change number, or when it stops
asking. On a standby: installing a snapshot, applying the primary's changes in order
exactly as the primary did, and promotion with the next epoch.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from zps.codecs import Compressed, Encoded, check_parts, codec_for
from zps.errors import ProtocolError
from zps.protocol import Replicated, Reply, Request, TensorMeta
from zps.server.replies import Lease
from zps.server.rounds import SyncRounds
from zps.server.state import ServerState
from zps.server.waiters import ACKED, PROMOTED
from zps.store import (
    Reader,
    RequestLedger,
    Snapshot,
    freeze_snapshot,
    make_optimizer,
    restore_store,
)
from zps.store.rows import parse_row_spec
from zps.store.snapshot import encode_snapshot

log = logging.getLogger("zps.server")

TRANSFER_IDLE = 30.0  # seconds without a chunk request before a snapshot is let go
CHUNK_ALLOWANCE = 64 << 10  # room for the header in a chunk reply


class SnapshotHold:
    """Keeps frozen buffers unchanged: done once released and every send of them ended."""

    def __init__(self) -> None:
        self.released = False
        self._readers: list[Reader] = []

    def pin(self, reader: Reader) -> None:
        self._readers = [r for r in self._readers if not r.done]
        self._readers.append(reader)

    @property
    def done(self) -> bool:
        return self.released and all(r.done for r in self._readers)

    def release(self) -> None:
        self.released = True


@dataclass(slots=True)
class _Transfer:
    id: int
    seq: int
    hold: SnapshotHold
    arrays: list[np.ndarray]  # flat: the header's bytes, then every array of the snapshot
    last_used: float


class Replica:
    """The replication side of a server's state."""

    def __init__(self, state: ServerState, rounds: SyncRounds) -> None:
        self.state = state
        self.rounds = rounds
        self.standby: str | None = None  # client id of the attached standby
        self.acked = 0  # the highest change number the standby holds
        self.pub_endpoint = ""
        self._transfer: _Transfer | None = None
        self._ids = itertools.count(1)
        # standby: the pieces of a row change received so far (a sync round's row update
        # travels in pieces; applied together when the last arrives, dropped if it never
        # does, so a promoted standby never holds part of a round)
        self._held: list[Replicated] = []

    @property
    def received(self) -> int:
        """The highest change number this standby holds, applied or held."""
        return self.state.store.seq + len(self._held)

    # ------------------------------------------------------------ primary side

    def attach(self, client: str, now: float) -> None:
        """``client`` says hello as this primary's standby."""
        state = self.state
        if self.standby not in (None, client):
            log.warning("standby %s replaced by %s", self.standby, client)
            state.members.remove(self.standby)
            self._let_go()
            self.acked = 0  # durable waits now wait for the new standby
        state.members.add(client, "standby", now)
        if self.standby != client:
            log.info("standby %s attached (replication %s)", client, state.config.replication)
        self.standby = client

    def detach(self, why: str) -> None:
        """The standby left or went silent: updates are acknowledged without it."""
        log.warning("standby %s %s: updates are acknowledged without a standby until one "
                    "attaches", self.standby, why)
        self.standby = None
        self._let_go()
        self.state.waiters.wake(ACKED)

    def require_standby(self, client: str) -> None:
        if client == self.standby:
            return
        if self.standby is not None:
            raise ProtocolError("replaced", f"standby {self.standby} has taken this one's "
                                            "place")
        raise ProtocolError("not_registered", "only the attached standby may ask for this: "
                                              "send hello with role 'standby'")

    def start_snapshot(self, request: Request, now: float) -> Reply:
        """Freeze the store and describe the snapshot's arrays (read with ``chunk``)."""
        self.require_standby(request.client_id)
        self._let_go()
        hold = SnapshotHold()
        snapshot = freeze_snapshot(self.state.store, self.state.epoch, self.extra_state(), hold)
        header, arrays = encode_snapshot(snapshot)
        flat = [np.frombuffer(header, np.uint8), *(a.reshape(-1) for a in arrays)]
        self._transfer = _Transfer(next(self._ids), snapshot.seq, hold, flat, now)
        manifest = {"id": self._transfer.id, "seq": snapshot.seq,
                    "arrays": [[a.dtype.name, int(a.size)] for a in flat]}
        return Reply(request.request_id, info={**self.state.info(), "snapshot": manifest})

    def chunk(self, request: Request, now: float) -> tuple[Reply, tuple[Lease, ...]]:
        """Elements [start, stop) of array ``a`` of the snapshot being read, zero-copy."""
        self.require_standby(request.client_id)
        transfer, options = self._transfer, request.options
        if transfer is None or options.get("id") != transfer.id:
            raise ProtocolError("bad_header", "no such snapshot: ask for a new one")
        index, start, stop = (_int(options.get(k)) for k in ("a", "start", "stop"))
        if not 0 <= index < len(transfer.arrays):
            raise ProtocolError("bad_header", "a chunk is named by integers a, start, stop")
        array = transfer.arrays[index]
        limit = self.state.config.limits.max_message_bytes - CHUNK_ALLOWANCE
        if not 0 <= start < stop <= array.size or (stop - start) * array.itemsize > limit:
            raise ProtocolError("bad_header", f"chunk [{start}, {stop}) is outside array "
                                              f"{index} or larger than {limit} bytes")
        transfer.last_used = now
        piece = array[start:stop]
        reply = Reply(request.request_id, (TensorMeta.of("chunk", piece),),
                      self.state.info(), None, (piece,))
        return reply, (Lease(0, transfer.hold),)

    def ack(self, client: str, seq: Any, installed: Any = None) -> None:
        """The standby holds every change up to ``seq`` (and, with ``installed``, has
        installed that snapshot: its buffers may change again). A periodic ack does not let
        a snapshot go: the standby may be reading it while already holding its seq."""
        self.require_standby(client)
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise ProtocolError("bad_header", "option 'seq' must be an int >= 0")
        self.acked = min(seq, self.state.store.seq)  # after a fresh snapshot it may go back
        if self._transfer is not None and installed == self._transfer.id:
            self._let_go()
        self.state.waiters.wake(ACKED)

    def tick(self, now: float) -> None:
        if self._transfer is not None and now - self._transfer.last_used > TRANSFER_IDLE:
            log.warning("the standby stopped reading its snapshot; letting it go")
            self._let_go()

    def _let_go(self) -> None:
        if self._transfer is not None:
            self._transfer.hold.release()
            self._transfer = None

    def acked_at_least(self) -> Any:
        """A condition: the standby holds every change made until it is first checked."""
        target: list[int] = []
        state = self.state

        def ready() -> bool:
            if not target:
                target.append(state.store.seq)
            return self.standby is None or self.acked >= target[0]
        return ready

    def extra_state(self) -> dict[str, Any]:
        """What a snapshot or checkpoint keeps besides the tables."""
        state = self.state
        return {"identity": state.ledger.export(), "mode": state.config.mode,
                "layout": state.layout, "shard": state.shard,
                "rounds": {t.name: self.rounds.bsp.closed(t.name)
                           for t in state.store.tables()}}

    # ------------------------------------------------------------ standby side

    def install(self, snapshot: Snapshot, adopt: bool = False) -> None:
        """Replace all state with ``snapshot`` (a standby catching up, or a restore).
        Raises ``ProtocolError`` if its extra state is malformed (nothing replaced)."""
        state, extra = self.state, snapshot.extra
        self._held.clear()
        try:
            ledger = RequestLedger.restore(extra.get("identity", []))
        except ValueError as exc:
            raise ProtocolError("bad_frames", f"snapshot request identity: {exc}") from None
        rounds = extra.get("rounds", {})
        layout, shard = extra.get("layout"), extra.get("shard")
        state.store = restore_store(snapshot, state.config.log_entries,
                                    state.config.log_bytes, adopt=adopt)
        state.ledger = ledger
        state.epoch = snapshot.epoch
        state.layout = layout if isinstance(layout, list) else None
        state.shard = shard if isinstance(shard, int) else None
        state.lead_table = next(iter(t.name for t in state.store.tables()), None)
        for table in state.store.tables():
            closed = rounds.get(table.name) if isinstance(rounds, dict) else None
            self.rounds.reset(table.name, closed if isinstance(closed, int) else table.version)

    def apply(self, change: Replicated) -> None:
        """Apply one change from the primary's stream exactly as the primary did.
        Raises ``ProtocolError`` if it does not fit what this standby holds."""
        state = self.state
        if self._held and (change.kind != "rows" or change.table != self._held[0].table):
            raise ProtocolError("bad_frames", f"change {change.seq} arrived before the last "
                                              f"piece of change {self._held[0].seq}")
        if change.kind == "create":
            self._create(change)
        elif change.kind in ("create_rows", "rows", "evict"):
            self._rows(change)
            if self._held:
                return  # the rest of the pieces follow
        else:
            table = state.store.get(change.table)
            update = self._update(change)
            shape = update.encoded.shape if isinstance(update, Compressed) else update.shape
            if tuple(shape) != table.shape or change.version != table.version + 1:
                raise ProtocolError("bad_frames", f"change {change.seq} does not fit table "
                                                  f"{change.table!r} here")
            state.store.apply(change.table, update, change.scale, change.requests)
            if state.sync:
                self.rounds.reset(change.table, self.rounds.bsp.closed(change.table) + 1)
        for client, request_id, watermark in change.requests:
            state.ledger.advance(client, watermark)
            state.ledger.applied(client, change.table, request_id)
        state.epoch = change.epoch

    def _rows(self, change: Replicated) -> None:
        """A row table's change, applied as the primary applied it (same time, so the
        same recency, admission counts and optimizer steps)."""
        state = self.state
        if change.kind == "create_rows":
            meta = change.meta
            share = meta.get("share", 1)
            state.store.create_rows(change.table, parse_row_spec(meta),
                                    share if isinstance(share, int) else 1)
            self._adopt_layout(meta.get("layout"))
            state.lead_table = state.lead_table or change.table
            return
        table = state.store.rows(change.table)
        arrays = change.row_arrays()
        if change.version != table.version + len(self._held) + 1:
            raise ProtocolError("bad_frames", f"change {change.seq} does not fit row table "
                                              f"{change.table!r} here")
        if change.kind == "evict":
            state.store.evict_rows(change.table, arrays["ids"])
            return
        ids, updates = arrays["ids"], arrays["updates"]
        if updates.shape != (ids.size, table.spec.dim) or updates.dtype != table.dtype:
            raise ProtocolError("bad_frames", f"change {change.seq} does not fit row table "
                                              f"{change.table!r} here")
        if change.meta.get("more"):
            self._held.append(change)
            return
        pieces, self._held = [*self._held, change], []
        for piece in pieces:
            now = piece.meta.get("now", 0.0)
            rows = piece.row_arrays()
            state.store.apply_rows(piece.table, rows["ids"], rows["updates"], piece.scale,
                                   piece.requests, float(now) if isinstance(now, int | float)
                                   else 0.0, more=piece is not change)
        if state.sync:  # the last piece closes the round
            self.rounds.reset(change.table, self.rounds.bsp.closed(change.table) + 1)

    def _adopt_layout(self, layout: Any) -> None:
        state = self.state
        if isinstance(layout, list) and len(layout) >= 2 and state.layout is None:
            state.layout, state.shard = layout[:2], layout[2] if len(layout) > 2 else None

    def _create(self, change: Replicated) -> None:
        state = self.state
        initial = change.dense()
        if initial is None:
            raise ProtocolError("bad_frames", "a created table must come dense")
        state.store.create(change.table, initial, make_optimizer(change.meta.get("optimizer")))
        self._adopt_layout(change.meta.get("layout"))
        state.lead_table = state.lead_table or change.table

    def _update(self, change: Replicated) -> np.ndarray | Compressed:
        dense = change.dense()
        if dense is not None:
            return dense
        meta = change.encoded
        assert meta is not None  # decode_stream guarantees one of the two
        codec = codec_for(meta.codec)
        encoded = Encoded(meta.codec, meta.shape, meta.dtype, change.parts(), meta.params)
        check_parts(codec, encoded)
        return Compressed(codec, encoded)

    def promote(self, now: float) -> None:
        """Take over as primary with the next epoch; answers the clients' watches."""
        state = self.state
        if self._held:
            log.warning("dropping %d pieces of change %d whose last piece never came: its "
                        "pushes are retried here", len(self._held), self._held[0].seq)
            self._held.clear()
        state.role = "primary"
        state.epoch += 1
        if state.sync and any(t.version for t in state.store.tables()):
            self.rounds.start_after(now, state.config.heartbeat_interval * state.config.liveness)
        state.waiters.wake(PROMOTED)


def _int(value: Any) -> int:
    """An integer option, or -1 (out of every range) if it is not one."""
    return value if isinstance(value, int) and not isinstance(value, bool) else -1
