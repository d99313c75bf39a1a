"""Push acceptance (sans-IO): validate an update completely, deduplicate it, accept it.

Nothing changes until every tensor of the push is checked (shape, dtype, codec, parts,
options, the request's identity). Then each table's part is new (applied now in async and
SSP modes, or added to its sync round), already applied (a retry: nothing happens), or
pending in a round (a retry: its reply waits for that round).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from zps.codecs import Compressed, Encoded, check_parts, codec_for
from zps.errors import ProtocolError
from zps.protocol import ROW_OPS, EncodedMeta, Request
from zps.server.rounds import Contribution, SyncRounds
from zps.server.state import ServerState
from zps.store import APPLIED, NEW, DenseTable
from zps.store.errors import BadIds
from zps.store.rowplace import batch
from zps.store.store import RowPayload
from zps.store.tables import Update


@dataclass(frozen=True, slots=True)
class Accepted:
    """What became of a push: per table, the sync round it is in (0: dropped as late;
    absent in async and SSP modes)."""

    rounds: dict[str, int]
    duplicate: bool


class Pushes:
    """Accepts pushes into the store (async, SSP) or into sync rounds."""

    def __init__(self, state: ServerState, rounds: SyncRounds) -> None:
        self.state = state
        self.rounds = rounds

    def accept(self, request: Request, now: float) -> Accepted:
        """Validate ``request`` completely, then apply or queue what is new in it.
        Raises ``ProtocolError`` (or a store or codec error) and changes nothing if any
        part of it is wrong."""
        state = self.state
        updates = self._row_updates(request) if request.op in ROW_OPS else \
            self._updates(request)
        cid, rid = request.client_id, request.request_id
        loss = _number(request, "loss", None)
        weight = _number(request, "weight", 1.0)
        if weight is None or weight < 0:
            raise ProtocolError("bad_header", "option 'weight' must be >= 0")
        if request.watermark is None:
            raise ProtocolError("bad_header", "an update carries the client's watermark 'w'")
        state.ledger.check(rid, request.watermark)
        fresh: dict[str, Update | RowPayload] = {}
        rounds: dict[str, int] = {}
        for name, update in updates.items():
            status = state.ledger.status(cid, name, rid)
            if status == NEW:
                fresh[name] = update
            elif status != APPLIED:
                rounds[name] = status  # a retry of a push waiting in that round
        if not fresh:
            state.counters["duplicates"] += 1
            return Accepted(rounds, True)
        if state.kind != "async" and cid not in self.rounds.bsp.members:
            raise ProtocolError(
                "not_registered",
                f"client {cid} is not a registered worker of this {state.config.mode} job: "
                "send hello with role 'worker' first (it may have been declared dead)",
            )
        state.ledger.advance(cid, request.watermark)
        state.counters["pushes"] += 1
        self._count_bytes(request)
        if state.sync:
            for name, update in fresh.items():
                contribution = Contribution(cid, rid, request.watermark, weight, update)
                rounds[name] = self.rounds.push(name, contribution, self._based_on(name, cid),
                                                now)
        else:
            self._apply_now(request, fresh, loss)
        return Accepted(rounds, False)

    def _updates(self, request: Request) -> dict[str, Update]:
        """Every tensor of the push as an update, checked against its table."""
        store = self.state.store
        updates: dict[str, Update] = {}
        for meta, buffer in zip(request.tensors, request.buffers, strict=False):
            store.get(meta.name).check(meta.shape, meta.dtype, "push")
            updates[meta.name] = np.frombuffer(buffer, dtype=meta.dtype).reshape(meta.shape)
        for name, (packed, parts) in request.encoded_parts().items():
            updates[name] = _compressed(store.get(name), packed, parts)
        return updates

    def _row_updates(self, request: Request) -> dict[str, RowPayload]:
        """A row push as distinct ids and their updates, checked against its table
        (duplicate ids, which a client does not send, are summed here too)."""
        name = request.names[0]
        table = self.state.store.rows(name)
        arrays = request.arrays()
        ids = arrays["ids"]
        packed = request.encoded_parts().get("updates")
        if packed is not None:  # fp16 or int8 rows: checked completely, then decoded
            meta, parts = packed
            if meta.shape[1] != table.spec.dim or meta.dtype != table.spec.dtype:
                raise BadIds(f"row updates of {name!r} must be {table.spec.dtype} rows of "
                             f"{table.spec.dim}, got {meta.dtype} rows of {meta.shape[1]}")
            codec = codec_for(meta.codec)
            encoded = Encoded(meta.codec, meta.shape, meta.dtype, parts, meta.params)
            check_parts(codec, encoded)
            updates = Compressed(codec, encoded).dense()
        else:
            updates = arrays["updates"]
        if updates.shape[1] != table.spec.dim or updates.dtype != table.dtype:
            raise BadIds(f"row updates of {name!r} must be {table.spec.dtype} rows of "
                         f"{table.spec.dim}, got {updates.dtype} rows of {updates.shape[1]}")
        merged = batch(ids, 1)  # sorted distinct ids (what clients send) pass as they are
        return {name: RowPayload(merged.unique, merged.summed(updates))}

    def _based_on(self, name: str, cid: str) -> int | None:
        """The newest round the worker's update is based on (None: it cannot be late)."""
        if not self.rounds.may_skip:
            return None
        read = self.state.last_read.get((name, cid))
        pushed = self.rounds.bsp.last_round(name, cid)
        # A worker this server has seen neither read nor push (this server took over or
        # restored since) is not late: its update is based on what it saw elsewhere.
        if read is None and pushed == 0:
            return None
        return max(read or 0, pushed)

    def _apply_now(self, request: Request, fresh: dict[str, Update | RowPayload],
                   loss: float | None) -> None:
        state = self.state
        cid, rid, watermark = request.client_id, request.request_id, request.watermark or 0
        requests = ((cid, rid, watermark),)
        state.rates.observe(cid, loss)
        for name, update in fresh.items():
            version = state.store.table(name).version
            staleness = version - state.last_read.get((name, cid), version)
            eta = state.rates.eta(cid, staleness)
            if isinstance(update, RowPayload):
                state.store.apply_rows(name, update.ids, update.updates, eta, requests,
                                       state.clock())
            else:
                state.store.apply(name, update, eta, requests)
            state.ledger.applied(cid, name, rid)
            if state.kind == "ssp":
                state.clocks.tick(name, cid)
                state.waiters.wake(name)

    def _count_bytes(self, request: Request) -> None:
        state = self.state
        total = 0
        rows = request.names[0] if request.op in ROW_OPS else None
        for meta in request.tensors:
            traffic = state.traffic_of(rows or meta.name)
            traffic.wire_in += meta.nbytes
            traffic.dense_in += meta.nbytes
            total += meta.nbytes
        for encoded in request.encoded:
            wire = sum(n for _, n in encoded.parts)
            traffic = state.traffic_of(rows or encoded.name)
            traffic.wire_in += wire
            traffic.dense_in += math.prod(encoded.shape) * np.dtype(encoded.dtype).itemsize
            total += wire
        state.counters["bytes_in"] += total


def _compressed(table: DenseTable, meta: EncodedMeta,
                parts: tuple[np.ndarray, ...]) -> Compressed:
    """A compressed push for ``table``, checked completely (``CodecError``, store errors)."""
    table.check(meta.shape, meta.dtype, "push")
    codec = codec_for(meta.codec)
    encoded = Encoded(meta.codec, meta.shape, meta.dtype, parts, meta.params)
    check_parts(codec, encoded)
    return Compressed(codec, encoded)


def _number(request: Request, key: str, default: float | None) -> float | None:
    value = request.options.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProtocolError("bad_header", f"option {key!r} must be a finite number")
    return float(value)

