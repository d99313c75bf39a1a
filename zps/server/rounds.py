"""Sync rounds on the server (sans-IO): pushes into rounds, combined and applied.

``BspRounds`` decides which round a push belongs to and when a round closes; this part
turns a closed round into one update and applies it. For the ``mean`` and ``weighted``
rules, pushes are summed into the open round's accumulator as they arrive (a compressed
push decoded straight into it), so the frames are freed early and closing a round costs one
scale and one apply. ``median`` and ``trimmed`` need every update at once: they are
stacked into one array when the round closes, and reduced in place.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from zps.codecs import Compressed, add_scaled
from zps.consistency import BspRounds, ClosedRound
from zps.consistency.aggregate import parse_rule, trim_count
from zps.server.state import ServerState
from zps.store.rowplace import batch
from zps.store.store import RowPayload
from zps.store.tables import Update

log = logging.getLogger("zps.server")

DROPPED = ("not_registered", "this worker was declared dead while its push waited for a "
                             "later round; the push was not applied: register again and "
                             "send it again")
FOLDED_RULES = ("mean", "weighted")
ROW_PIECE = 4 << 20  # bytes of row updates per numbered change (and stream message)


@dataclass(slots=True, eq=False)
class Contribution:
    """One worker's push to one table's round."""

    client: str
    request_id: int
    watermark: int
    weight: float
    update: Update | RowPayload | None  # None once summed into the round's accumulator


@dataclass(slots=True)
class _Sum:
    total: np.ndarray
    weight: float = 0.0


class SyncRounds:
    """The sync rounds of every table of one server."""

    def __init__(self, state: ServerState) -> None:
        cfg = state.config
        self.state = state
        self.bsp: BspRounds[Contribution] = BspRounds(
            cfg.workers, cfg.quorum or None, "fold" if cfg.late == "fold" else "drop")
        self.rule = parse_rule(cfg.aggregate)
        self.may_skip = bool(cfg.quorum or cfg.round_timeout)  # so pushes can be late
        self._sums: dict[str, _Sum] = {}
        self._opened: dict[str, float] = {}  # when each open round got its first push
        self._start_at: float | None = None

    def push(self, key: str, contribution: Contribution, based_on: int | None,
             now: float) -> int:
        """Add a push to its round; returns the round (0: late and dropped)."""
        target, closed = self.bsp.push(key, contribution.client, contribution, based_on)
        ledger = self.state.ledger
        if target == 0:
            self.state.counters["dropped"] += 1
            ledger.applied(contribution.client, key, contribution.request_id)  # retries too
            return 0
        ledger.pending(contribution.client, key, contribution.request_id, target)
        self._apply(closed, now)
        self._after_change(key, now)
        return target

    def leave(self, client: str, now: float) -> None:
        """Remove a worker; rounds waiting only on it close, its queued pushes are dropped
        (and their replies failed, so it sends them again when it comes back)."""
        closed, dropped = self.bsp.leave(client)
        self._apply(closed, now)
        for key, contribution in dropped:
            self.state.ledger.discard(contribution.client, key, contribution.request_id)
            self.state.waiters.fail_request(contribution.client, contribution.request_id,
                                            *DROPPED)
        for key in {c.key for c in closed}:
            self._after_change(key, now)

    def start_after(self, now: float, grace: float) -> None:
        """After a takeover: start rounds once ``workers`` registered, or after ``grace``
        seconds if fewer survived (a worker that died with the old primary must not hold
        the rest forever)."""
        self._start_at = now + grace

    def tick(self, now: float) -> None:
        """Close rounds open past the round timeout; start rounds when due."""
        if self._start_at is not None and now >= self._start_at:
            self._start_at = None
            self._apply(self.bsp.start(), now)
        timeout = self.state.config.round_timeout
        if timeout > 0:
            for key, opened in list(self._opened.items()):
                if now - opened >= timeout:
                    self.state.counters["timeouts"] += 1
                    self._apply(self.bsp.close_now(key), now)
                    self._after_change(key, now)

    def reset(self, key: str, closed: int) -> None:
        """Start ``key`` at ``closed`` rounds with nothing open (a snapshot installed)."""
        self.bsp.set_closed(key, closed)
        self._sums.pop(key, None)
        self._opened.pop(key, None)

    def most_closed(self) -> int:
        """The job's round count: the most rounds any table has closed."""
        return max((self.bsp.closed(t.name) for t in self.state.store.tables()), default=0)

    # ------------------------------------------------------------ internals

    def _after_change(self, key: str, now: float) -> None:
        """Sum the open round's pushes so far; note when it opened."""
        if self.bsp.open_count(key) == 0:
            self._opened.pop(key, None)
            return
        self._opened.setdefault(key, now)
        if self.rule.name in FOLDED_RULES and self.bsp.open_count(key) >= 2 \
                and self.state.store.table(key).kind == "dense":
            for contribution in self.bsp.open_payloads(key):
                self._fold(key, contribution)

    def _fold(self, key: str, contribution: Contribution) -> None:
        update = contribution.update
        if update is None:
            return
        assert not isinstance(update, RowPayload)  # row rounds are combined at the close
        contribution.update = None
        weight = contribution.weight if self.rule.name == "weighted" else 1.0
        acc = self._sums.get(key)
        if acc is None:
            data = self.state.store.get(key).data
            if weight and isinstance(update, np.ndarray) and update.shape == data.shape:
                # The first push starts the sum: one pass, not zeros and then an add.
                total = (np.array(update, dtype=data.dtype) if weight == 1.0 else
                         np.multiply(update, data.dtype.type(weight), dtype=data.dtype))
                self._sums[key] = _Sum(total, weight)
                return
            acc = self._sums[key] = _Sum(np.zeros_like(data))
        acc.weight += weight
        if weight:
            add_scaled(acc.total, update, weight)

    def _apply(self, closed: list[ClosedRound[Contribution]], now: float) -> None:
        state = self.state
        for done in closed:
            # From the round's first push to its close: how long the barrier waited.
            state.latency.observe("round", now - self._opened.pop(done.key, now))
            requests = tuple((c.client, c.request_id, c.watermark) for c in done.payloads)
            if state.store.table(done.key).kind == "rows":
                self._apply_rows(done.key, self._combine_rows(done), requests)
            else:
                state.store.apply(done.key, self._combine(done), 1.0, requests)
            for c in done.payloads:
                state.ledger.applied(c.client, done.key, c.request_id)
            state.counters["rounds"] += 1
            state.waiters.wake(done.key)
            if done.key == state.lead_table:
                self._log_round(done)

    def _combine(self, done: ClosedRound[Contribution]) -> Update:
        """One round's update by the aggregation rule."""
        payloads = done.payloads
        single = payloads[0].update
        if len(payloads) == 1 and self.rule.name != "weighted" and single is not None:
            assert not isinstance(single, RowPayload)
            return single
        if self.rule.name in FOLDED_RULES:
            for contribution in payloads:
                self._fold(done.key, contribution)
            acc = self._sums.pop(done.key)
            if self.rule.name == "mean":
                acc.total *= acc.total.dtype.type(1.0 / len(payloads))
            elif acc.weight > 0:
                acc.total *= acc.total.dtype.type(1.0 / acc.weight)
            else:
                acc.total.fill(0)  # every weight was 0: the round changes nothing
            return acc.total
        return self._robust(done.key, payloads)

    def _apply_rows(self, key: str, rows: RowPayload, requests: tuple[Any, ...]) -> None:
        """A round's row update, applied (and replicated) in pieces of at most
        ``ROW_PIECE`` bytes: the union of every worker's rows can be far larger than one
        message; the requests travel with the last piece."""
        state = self.state
        budget = min(ROW_PIECE, state.config.limits.max_message_bytes // 4)
        per_piece = max(1, budget // max(1, rows.updates.nbytes // max(1, rows.ids.size)))
        now = state.clock()
        starts = list(range(0, max(1, rows.ids.size), per_piece))
        for i, start in enumerate(starts):
            last = i == len(starts) - 1
            piece = slice(start, start + per_piece)
            state.store.apply_rows(key, rows.ids[piece], rows.updates[piece], 1.0,
                                   requests if last else (), now, more=not last)

    def _combine_rows(self, done: ClosedRound[Contribution]) -> RowPayload:
        """A round of row pushes: per id, the mean over the round's workers (one that did
        not touch a row counts as zero, as in dense data-parallel SGD), or the weighted
        mean."""
        payloads: list[RowPayload] = []
        for contribution in done.payloads:
            assert isinstance(contribution.update, RowPayload)
            payloads.append(contribution.update)
        weighted = self.rule.name == "weighted"
        if len(payloads) == 1 and not weighted:  # a mean over one worker: its own rows
            return payloads[0]
        ids = np.concatenate([p.ids for p in payloads])
        updates = np.concatenate([p.updates for p in payloads])  # one copy, scaled in place
        total = float(len(payloads))
        if weighted:
            weights = [c.weight for c in done.payloads]
            bounds = np.cumsum([0, *(p.ids.size for p in payloads)])
            for w, start, stop in zip(weights, bounds[:-1], bounds[1:], strict=True):
                updates[start:stop] *= updates.dtype.type(w)
            total = sum(weights)
        merged = batch(ids, 1)
        summed = merged.summed(updates) if ids.size else updates
        if total > 0:
            summed *= summed.dtype.type(1.0 / total)
        else:
            summed[...] = 0  # every weight was 0: the round changes nothing
        return RowPayload(merged.unique, summed)

    def _robust(self, key: str, payloads: tuple[Contribution, ...]) -> np.ndarray:
        """Median or trimmed mean, coordinate-wise, over one stacked array."""
        table = self.state.store.get(key).data
        stacked = np.empty((len(payloads), *table.shape), table.dtype)
        for row, contribution in zip(stacked, payloads, strict=True):
            update = contribution.update
            if isinstance(update, Compressed):
                row.fill(0)
                update.add_into(row)
            else:
                row[...] = update
        if self.rule.name == "median":
            return np.median(stacked, axis=0, overwrite_input=True).astype(table.dtype,
                                                                          copy=False)
        k = trim_count(self.rule.trim, len(payloads))
        stacked.sort(axis=0)
        return stacked[k:len(payloads) - k].mean(axis=0, dtype=table.dtype)

    def _log_round(self, done: ClosedRound[Contribution]) -> None:
        if done.missing:
            log.info("round %d closed without %s", done.round, ", ".join(done.missing))
        if done.round % self.state.config.log_every_rounds == 0:
            log.info("round %d applied (seq %d, %d workers)", done.round,
                     self.state.store.seq, len(self.bsp.members))
