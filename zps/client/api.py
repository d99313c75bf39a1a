"""What both clients offer, built on the engine: properties, and the calls of the API.

``Client`` and ``AsyncClient`` differ only in how they wait; each public method here turns
its arguments into an engine ``Call`` the same way for both.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import Any

import numpy as np

from zps.client.calls import Call
from zps.client.engine import Engine
from zps.client.ondevice import deltas_namespace, on_device, resolve, split_out
from zps.client.placement import Layout, described
from zps.client.plans import Message, outputs, push_options
from zps.config import ClientConfig
from zps.devices import host_copy
from zps.errors import ConfigError, ShapeMismatchError
from zps.protocol import Op

log = logging.getLogger("zps.client")

BYE_TIMEOUT = 1.0  # seconds a goodbye may take on close


class ClientBase:
    """The properties and call builders both clients share."""

    _engine: Engine
    _warned_existing = False

    @property
    def servers(self) -> list[str]:
        """The server endpoints, in the order given."""
        return self._engine.servers

    @property
    def config(self) -> ClientConfig:
        return self._engine.config

    @property
    def client_id(self) -> str:
        """This client's id on the servers (also its worker id)."""
        return self._engine.client_id

    @property
    def layout(self) -> Layout | None:
        """Where each table lives, once ``init`` was called."""
        return self._engine.planner.layout

    @property
    def server_info(self) -> dict[str, Any]:
        """What the first server said in answer to hello (mode, limits, optimizer...)."""
        return dict(self._engine.hello[0])

    def metrics(self) -> dict[str, Any]:
        """This client's own counts: calls and errors by op, call latency histograms
        (seconds, from start to result), retries and failovers. Safe from any thread."""
        return self._engine.metrics.info()

    @property
    def rank(self) -> int | None:
        """This worker's rank: ``rank=`` as given, else the one the first server assigned
        at hello (the lowest no live worker holds; the same again for a ``client_id`` that
        comes back). None for observers."""
        return self._engine.rank if self._engine.config.role == "worker" else None

    @property
    def num_workers(self) -> int:
        """How many workers the servers were started for (``zps-server --workers``)."""
        return int(self._engine.hello[0].get("workers", 1))

    @property
    def mode(self) -> str:
        """The consistency mode the servers run (``sync``, ``async`` or ``ssp:K``)."""
        return str(self._engine.hello[0].get("mode", ""))

    def set_codec(self, names: Iterable[str], codec: str, error_feedback: bool = True) -> None:
        """Push the dense tables ``names`` through ``codec`` (``none``, ``fp16``,
        ``int8[:BLOCK]``, ``sign[:BLOCK]``, ``topk[:RATIO]``) instead of the client's, each
        with its own error feedback unless ``error_feedback=False``. ``ConfigError`` for a
        bad codec."""
        self._engine.planner.set_codec(list(names), codec, error_feedback)

    # ------------------------------------------------------------ calls

    def _init_call(self, tensors: Mapping[str, Any],
                   optimizer: Mapping[str, Any] | None) -> Call:
        planner = self._engine.planner
        layout, arrays = planner.plan_init(tensors)
        options: dict[str, Any] = {"optimizer": dict(optimizer)} if optimizer else {}
        messages = planner.messages(Op.INIT, layout, list(arrays), arrays, options)
        for message in messages:  # the layout is checked on every server it touches
            message.options["layout"] = [len(self.servers), self.config.chunk_bytes,
                                         message.server]

        def finish(call: Call) -> Any:
            planner.layout = layout  # only once the servers hold every table
            self._note_existing(call)
            return call.out
        return Call(Op.INIT, messages, outputs(layout, arrays), finish=finish)

    def _note_existing(self, call: Call) -> None:
        """Say once if init found tables that had been trained already (a re-run against
        a live server continues from the old values, not the ones given)."""
        if self._warned_existing:
            return
        trained: dict[str, int] = {}
        for message, info in zip(call.messages, call.infos(), strict=True):
            created = set(info.get("created", ()))
            versions = info.get("versions", {})
            for part in message.parts:
                version = versions.get(part.key, 0) if isinstance(versions, dict) else 0
                if part.key not in created and isinstance(version, int) and version > 0:
                    trained[part.table] = max(trained.get(part.table, 0), version)
        if trained:
            self._warned_existing = True
            listed = ", ".join(f"{name} (version {v})" for name, v in sorted(trained.items()))
            log.warning("tables already on the servers with updates applied: %s; continuing "
                        "from their current values, not from the values given to init",
                        listed)

    def _pull_call(self, names: Iterable[str] | None, out: Mapping[str, Any] | None = None,
                   device: str | ModuleType | None = None) -> Call:
        planner = self._engine.planner
        wanted = planner.wanted(names if names is not None or out is None else list(out))
        layout = planner.need_layout()
        host_out, device_out = split_out(out, layout.specs)
        call = Call(Op.PULL, planner.messages(Op.PULL, layout, wanted),
                    planner.outputs(wanted, host_out), delta=self._engine.held is not None)
        return on_device(call, resolve(device), device_out)

    def _push_call(self, op: Op, deltas: Mapping[str, Any], loss: float | None,
                   weight: float | None, out: Mapping[str, Any] | None = None) -> Call:
        planner = self._engine.planner
        xp = deltas_namespace(deltas)
        arrays = planner.deltas(deltas)
        layout = planner.need_layout()
        if op == Op.PUSH and out is not None:
            raise ConfigError("push returns nothing: give out= to push_pull or pull")
        host_out, device_out = split_out(out, layout.specs)
        results = planner.outputs(list(arrays), host_out) if op == Op.PUSH_PULL else {}
        messages = planner.messages(op, layout, list(arrays), arrays,
                                    push_options(loss, weight))
        if op == Op.PUSH:
            return Call(op, messages, finish=lambda call: None)
        call = Call(op, messages, results, delta=self._engine.held is not None)
        return on_device(call, xp, device_out)

    def _needs_tables(self, names: Iterable[str] | None) -> bool:
        """Whether a pull of ``names`` (all: None) must first learn the tables from the
        servers: this client never called ``init``, or not with these names."""
        layout = self._engine.planner.layout
        if layout is None:
            return True
        wanted = [names] if isinstance(names, str) else names
        return wanted is not None and any(n not in layout.specs for n in wanted)

    def _learn_call(self) -> Call:
        """Ask every server which tables it holds and adopt their layout (tables this
        client placed itself stay as they are)."""
        engine = self._engine

        def finish(call: Call) -> None:
            per_server = [info.get("tables", []) for info in call.infos()]
            engine.planner.adopt(described(per_server))
            engine.rows.learn(merge_tables(per_server))
        messages = [Message(i, Op.TABLES, ()) for i in range(len(engine.servers))]
        return Call(Op.TABLES, messages, finish=finish)

    def _stats_call(self) -> Call:
        engine = self._engine
        messages = [Message(i, Op.STATS, ()) for i in range(len(engine.servers))]
        return Call(Op.STATS, messages, attempts=1, finish=lambda call: [
            dict(info, address=engine.address(i)) for i, info in enumerate(call.infos())])

    # ------------------------------------------------------------ row tables

    def _pull_rows_call(self, name: str, ids: Any) -> Call:
        """``pull_rows``: device ids are read on the host, the rows come back on their
        device."""
        xp = deltas_namespace({"ids": ids})
        return on_device(self._engine.rows.pull(name, host_copy(ids)), xp, {})

    def _push_rows_call(self, name: str, ids: Any, updates: Any, pull_ids: Any,
                        loss: float | None, weight: float | None, pull: bool) -> Call:
        """``push_rows`` and ``push_pull_rows``, device arrays copied to the host once."""
        xp = deltas_namespace({"ids": ids, "updates": updates, "pull": pull_ids})
        call = self._engine.rows.push(name, host_copy(ids), host_copy(updates),
                                      None if pull_ids is None else host_copy(pull_ids),
                                      push_options(loss, weight), pull=pull)
        return on_device(call, xp, {})

    def _init_rows_call(self, name: str, dim: int, dtype: str, init: str,
                        optimizer: Mapping[str, Any] | None, admit_after: int,
                        evict_after: float | None, max_rows: int | None) -> Call:
        if name in (self.layout.specs if self.layout else {}):
            raise ShapeMismatchError("conflict", f"{name!r} is a dense table; a row table "
                                                 "needs another name")
        try:
            dtype = np.dtype(dtype).name
        except TypeError:
            raise ConfigError(f"row dtype must be float32 or float64, got {dtype!r}") from None
        return self._engine.rows.init(name, {
            "dim": _integer(dim), "dtype": dtype, "init": init,
            "optimizer": dict(optimizer) if optimizer else None,
            "admit_after": _integer(admit_after), "evict_after": evict_after,
            "max_rows": None if max_rows is None else _integer(max_rows)})

    @staticmethod
    def _check_row_name(tables: list[dict[str, Any]], name: str) -> None:
        """Refuse, before any server creates it, a row table named as a dense table (the
        servers that do not hold that table would create the row table)."""
        if any(t.get("name") == name and t.get("kind") != "rows" for t in tables):
            raise ShapeMismatchError("conflict", f"{name!r} is a dense table; a row table "
                                                 "needs another name")

    def _knows_rows(self, name: str) -> bool:
        """Whether the client has ``name``'s row settings (else it asks, ``_tables_call``)."""
        return name in self._engine.rows.specs

    def _tables_call(self) -> Call:
        """``tables`` from every server, merged: a dense table split in row ranges is one
        entry (its rows summed), a row table's counts are summed over its shards."""
        engine = self._engine

        def finish(call: Call) -> list[dict[str, Any]]:
            tables = merge_tables([info.get("tables", []) for info in call.infos()])
            engine.rows.learn(tables)
            return tables
        messages = [Message(i, Op.TABLES, ()) for i in range(len(engine.servers))]
        return Call(Op.TABLES, messages, finish=finish)

    def _bye_call(self) -> Call:
        messages = [Message(i, Op.BYE, ()) for i in range(len(self._engine.servers))]
        return Call(Op.BYE, messages, timeout=BYE_TIMEOUT, attempts=1,
                    finish=lambda call: None)


def _integer(value: Any) -> Any:
    """NumPy integers as ints (what else is given is checked with the other settings)."""
    try:
        return operator.index(value) if not isinstance(value, bool) else value
    except TypeError:
        return value


SUMMED = ("rows", "bytes", "admitted", "evicted", "pending")


def merge_tables(per_server: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One entry per logical table from what each server holds."""
    merged: dict[str, dict[str, Any]] = {}
    for entries in per_server:
        for entry in entries:
            name = str(entry.get("name", "")).split("[", 1)[0]  # "w[0:500]" is part of "w"
            known = merged.get(name)
            if known is None:
                merged[name] = {**entry, "name": name}
            elif entry.get("kind") == "rows":
                for key in SUMMED:
                    known[key] = known.get(key, 0) + entry.get(key, 0)
            else:
                known["shape"] = [known["shape"][0] + entry["shape"][0], *known["shape"][1:]]
                known["version"] = max(known.get("version", 0), entry.get("version", 0))
    return list(merged.values())
