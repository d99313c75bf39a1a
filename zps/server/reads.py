"""Reads (sans-IO): when a pull may be answered, and what its answer carries.

A pull is answered once its worker may read: in sync mode after the round of its last
push closed, under SSP once the slowest worker is close enough, in async mode at once.
The answer carries each table whole, or for a delta pull the change since the version the
client holds: the logged changes themselves (exact, with pull codec ``none``), or their
sum encoded once with a lossy pull codec and shared by every worker asking the same.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from zps.codecs import Codec, Compressed, Encoded, add_scaled, codec_for, parse_codec_spec
from zps.errors import ProtocolError
from zps.protocol import EncodedMeta, Reply, Request, TensorMeta
from zps.server.replies import Lease
from zps.server.rounds import SyncRounds
from zps.server.state import ServerState
from zps.server.waiters import Condition
from zps.store import DenseTable

DELTA_CACHE_BYTES = 64 << 20  # lossy delta pulls encoded once, shared by workers alike


@dataclass(frozen=True, slots=True)
class PullWish:
    """What a pull asks for beyond the tables: the versions the client holds, and the
    codec for the change since then."""

    have: dict[str, int]
    codec: Codec
    spec: str  # the codec's canonical name (cache key)


class Reads:
    """Readiness of pulls and the building of their replies."""

    def __init__(self, state: ServerState, rounds: SyncRounds,
                 cache_bytes: int = DELTA_CACHE_BYTES) -> None:
        self.state = state
        self.rounds = rounds
        self._cache: OrderedDict[tuple[str, int, int, str], Compressed] = OrderedDict()
        self._cache_bytes = 0
        self._cache_limit = cache_bytes

    def wish(self, request: Request, names: list[str]) -> PullWish | None:
        """A pull's delta options, checked: the version of each table the client holds
        (``have``) and the codec for the change since then (``pull_codec``)."""
        spec = request.options.get("pull_codec")
        have = request.options.get("have", {})
        if spec is None and not have:
            return None
        wanted = set(names)
        if not isinstance(have, dict) or not all(
                isinstance(k, str) and k in wanted and isinstance(v, int)
                and not isinstance(v, bool) and v >= 0 for k, v in have.items()):
            raise ProtocolError("bad_header", "option 'have' must map tables of this request "
                                              "to the versions the client holds (ints >= 0)")
        if not isinstance(spec, str):
            raise ProtocolError("bad_header", "option 'pull_codec' must name a codec")
        canonical = parse_codec_spec(spec)  # CodecError (bad_header) for a bad spec
        return PullWish(have, codec_for(canonical), canonical)

    def conditions(self, client: str, names: list[str],
                   rounds: dict[str, int]) -> list[Condition]:
        """What must hold before ``client`` may read ``names`` (``rounds``: the sync round
        each of its pushes in this request went into)."""
        state = self.state
        if state.sync:
            bsp = self.rounds.bsp
            found = []
            for name in names:
                target = max(rounds.get(name, 0), bsp.last_round(name, client))
                if bsp.closed(name) < target:
                    found.append(Condition(name, _closed_at_least(bsp, name, target)))
            return found
        if state.kind == "ssp":
            clocks = state.clocks
            return [Condition(name, _may_read(clocks, name, client)) for name in names
                    if client in clocks.members and not clocks.may_read(name, client)]
        return []

    def reply(self, request: Request, names: list[str],
              wish: PullWish | None) -> tuple[Reply, tuple[Lease, ...]]:
        """The tables' values, or for a delta pull the change since the version the client
        holds (``info["delta"]`` says, per table, the base version and the steps that turn
        it into the current value; a table missing there is sent whole)."""
        state = self.state
        dense: list[tuple[TensorMeta, np.ndarray]] = []
        encoded: list[tuple[EncodedMeta, Encoded]] = []
        leases: list[Lease] = []
        deltas: dict[str, list[Any]] = {}
        versions: dict[str, int] = {}
        sent_total = 0
        for name in names:
            table = state.store.get(name)
            versions[name] = table.version
            steps = self._delta(table, wish) if wish and name in wish.have else None
            if steps is None:
                leases.append(Lease(len(dense), table))
                dense.append((TensorMeta.of(name, table.data), table.data))
                sent = table.nbytes
            else:
                plan, sent = [], 0
                for update, scale in steps:
                    if isinstance(update, Compressed):
                        enc = update.encoded
                        encoded.append((_encoded_meta(name, enc), enc))
                        plan.append(["z", len(encoded) - 1, scale])
                        sent += enc.nbytes
                    else:
                        dense.append((TensorMeta.of(name, update), update))
                        plan.append(["d", len(dense) - 1, scale])
                        sent += update.nbytes
                deltas[name] = [wish.have[name], plan]  # type: ignore[union-attr]
            traffic = state.traffic_of(name)
            traffic.wire_out += sent
            traffic.dense_out += table.nbytes
            sent_total += sent
        state.counters["bytes_out"] += sent_total
        self._note_read(request.client_id, names, versions)
        info: dict[str, Any] = {**state.info(), "versions": versions}
        if deltas:
            info["delta"] = deltas
        reply = Reply(request.request_id, tuple(m for m, _ in dense), info, None,
                      (*(a for _, a in dense), *(p for _, e in encoded for p in e.parts)),
                      tuple(m for m, _ in encoded))
        return reply, tuple(leases)

    def rows_reply(self, request: Request, name: str,
                   ids: np.ndarray) -> tuple[Reply, tuple[Lease, ...]]:
        """The rows of ``ids`` (stored, or their initial values: a pull creates none)."""
        state = self.state
        table = state.store.rows(name)
        rows = table.read(ids)
        traffic = state.traffic_of(name)
        traffic.wire_out += rows.nbytes
        traffic.dense_out += rows.nbytes
        state.counters["bytes_out"] += rows.nbytes
        self._note_read(request.client_id, [name], {name: table.version})
        info = {**state.info(), "versions": {name: table.version}}
        return Reply(request.request_id, (TensorMeta.of("rows", rows),), info, None,
                     (rows,)), ()

    def _note_read(self, client: str, names: list[str], versions: dict[str, int]) -> None:
        """What the worker now holds: the base its next push is computed from."""
        state = self.state
        if client not in state.members:
            return
        bsp = self.rounds.bsp
        for name in names:
            state.last_read[(name, client)] = bsp.closed(name) if state.sync else versions[name]

    def _delta(self, table: DenseTable, wish: PullWish) -> list[tuple[Any, float]] | None:
        """What turns the client's version of ``table`` into the current one, as a list of
        (update, scale) steps, or None when sending the whole table is better (the log no
        longer reaches back, or the change would not be smaller)."""
        base = wish.have[table.name]
        if base == table.version:
            return []
        changes = self.state.store.table_changes(table.name, base)
        if changes is None:
            return None
        exact = [(c.update, c.scale) for c in changes]
        exact_bytes = sum(c.update.nbytes for c in changes)
        if wish.codec.lossless or (len(changes) == 1 and isinstance(changes[0].update,
                                                                    Compressed)):
            return exact if exact_bytes < table.nbytes else None  # replayed bit for bit
        key = (table.name, base, table.version, wish.spec)
        cached = self._cache.get(key)
        if cached is None:
            total = np.zeros_like(table.data)
            for update, scale in exact:
                add_scaled(total, update, scale)  # type: ignore[arg-type]  # (dense log)
            cached = Compressed(wish.codec, wish.codec.encode(np, total))
            self._remember(key, cached)
        else:
            self._cache.move_to_end(key)
        return [(cached, 1.0)] if cached.nbytes < table.nbytes else None

    def _remember(self, key: tuple[str, int, int, str], delta: Compressed) -> None:
        self._cache[key] = delta
        self._cache_bytes += delta.nbytes
        while self._cache_bytes > self._cache_limit and self._cache:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= old.nbytes


def _closed_at_least(bsp: Any, name: str, target: int) -> Any:
    return lambda: bsp.closed(name) >= target


def _may_read(clocks: Any, name: str, client: str) -> Any:
    return lambda: client not in clocks.members or clocks.may_read(name, client)


def _encoded_meta(name: str, enc: Encoded) -> EncodedMeta:
    return EncodedMeta(name, enc.codec, enc.params, enc.dtype, enc.shape,
                       tuple((p.dtype.name, int(p.nbytes)) for p in enc.parts))

