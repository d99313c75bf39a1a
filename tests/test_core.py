"""The server core without sockets: requests in, replies out, with plain function calls.

Each test here is a regression test for a defect of the core's bookkeeping, written
against ``ServerCore.handle`` directly (the core imports neither asyncio nor zmq).
"""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from zps.config import ServerConfig
from zps.protocol import UPDATE_OPS, Op, Reply, Request, TensorMeta
from zps.server.core import ServerCore
from zps.server.reads import Reads
from zps.server.replies import Outgoing

ROOT = Path(__file__).resolve().parent.parent


class Harness:
    """A ``ServerCore`` and the clients talking to it (peer = client id)."""

    def __init__(self, **overrides: Any) -> None:
        self.core = ServerCore(replace(ServerConfig(), **overrides), "test")
        self.rid: dict[str, int] = {}
        self.now = 0.0

    def send(self, client: str, op: Op, arrays: dict[str, np.ndarray] | None = None,
             names: tuple[str, ...] = (), rid: int | None = None,
             **options: Any) -> list[Outgoing]:
        if rid is None:
            rid = self.rid[client] = self.rid.get(client, 0) + 1
        arrays = {k: np.ascontiguousarray(v) for k, v in (arrays or {}).items()}
        request = Request(op, client, rid, tuple(TensorMeta.of(n, a) for n, a in arrays.items()),
                          names, options, tuple(arrays.values()),
                          watermark=rid if op in UPDATE_OPS else None)
        return self.core.handle(client, request, self.now)

    def hello(self, *clients: str) -> None:
        for client in clients:
            assert ok(self.send(client, Op.HELLO, role="worker"))

    def table(self, name: str) -> np.ndarray:
        return self.core.store.get(name).data.copy()


def ok(out: list[Outgoing]) -> list[Reply]:
    replies = [o.reply for o in out]
    assert all(r.ok for r in replies), [r.error for r in replies]
    return replies


def for_(out: list[Outgoing], client: str) -> list[Reply]:
    return [o.reply for o in out if o.peer == client]


def test_a_worker_declared_dead_mid_round_does_not_get_its_push_applied_twice() -> None:
    """Regression: a worker declared dead while its push sat in the open round registered
    again and resent the same request id; the update was applied in two rounds."""
    h = Harness(mode="sync", workers=2)
    h.hello("a", "b")
    h.send("a", Op.INIT, {"w": np.zeros(2, np.float32)})
    h.send("b", Op.INIT, {"w": np.zeros(2, np.float32)})
    pushed = h.send("a", Op.PUSH_PULL, {"w": np.full(2, 4.0, np.float32)})
    assert pushed == []  # waits for b
    rid = h.rid["a"]
    h.now = 100.0  # a falls silent: declared dead
    h.core.state.members.touch("b", h.now)
    failed = h.core.tick(h.now)
    assert [r.error[0] for r in for_(failed, "a")] == ["not_registered"]  # told, not silent
    h.hello("a")  # it is alive after all: registers again and resends
    assert h.send("a", Op.PUSH_PULL, {"w": np.full(2, 4.0, np.float32)}, rid=rid) == []
    replies = for_(h.send("b", Op.PUSH_PULL, {"w": np.full(2, 2.0, np.float32)}), "b")
    assert ok([Outgoing("b", r) for r in replies])
    np.testing.assert_array_equal(h.table("w"), 3.0)  # mean of 4 and 2, once
    assert h.core.rounds.bsp.closed("w") == 1
    h.send("b", Op.PUSH, {"w": np.zeros(2, np.float32)})
    assert h.core.rounds.bsp.open_count("w") == 1  # a's push is not in round 2


def test_a_queued_push_dropped_when_its_worker_leaves_is_not_acknowledged() -> None:
    """Regression: a sync push queued for a later round, dropped when its worker was
    declared dead, was still answered OK (so the worker never sent it again)."""
    h = Harness(mode="sync", workers=2)
    h.hello("a", "b")
    for c in "ab":
        h.send(c, Op.INIT, {"w": np.zeros(2, np.float32)})
    assert ok(h.send("a", Op.PUSH, {"w": np.ones(2, np.float32)}))  # round 1: acknowledged
    assert h.send("a", Op.PUSH, {"w": np.ones(2, np.float32)}) == []  # queued for round 2
    h.now = 100.0
    h.core.state.members.touch("b", h.now)
    out = h.core.tick(h.now)
    assert [r.error[0] for r in for_(out, "a")] == ["not_registered"]
    assert h.core.state.ledger.status("a", "w", h.rid["a"]) == -1  # may be sent again


def test_requests_of_a_dead_worker_that_wait_on_a_round_get_an_answer() -> None:
    """Regression: in sync mode a dead worker's pulls waiting on a round were never
    answered."""
    h = Harness(mode="sync", workers=2)
    h.hello("a", "b")
    for c in "ab":
        h.send(c, Op.INIT, {"w": np.zeros(2, np.float32)})
    assert h.send("a", Op.PUSH_PULL, {"w": np.ones(2, np.float32)}) == []
    assert h.send("a", Op.PULL, names=("w",)) == []
    h.now = 100.0
    h.core.state.members.touch("b", h.now)
    out = for_(h.core.tick(h.now), "a")
    assert len(out) == 2 and all(r.error[0] == "not_registered" for r in out)
    assert len(h.core.state.waiters) == 0


def test_a_durable_reply_is_built_when_sent_not_when_the_push_applied() -> None:
    """Regression: with --replication sync, a reply waiting for the standby's ack held the
    table's buffer while later pushes changed it in place, so a delta-pulling client held
    a copy that differed from the server's. The reply is now built when it can be sent:
    its values and its versions agree."""
    h = Harness(mode="async", replication="sync")
    assert ok(h.send("standby-1", Op.HELLO, role="standby"))
    h.hello("a", "b")
    h.send("a", Op.INIT, {"w": np.zeros(3, np.float32)})
    h.send("standby-1", Op.ACK, seq=h.core.store.seq)
    assert h.send("a", Op.PUSH_PULL, {"w": np.ones(3, np.float32)}) == []  # waits: ack
    assert h.send("b", Op.PUSH, {"w": np.full(3, 5.0, np.float32)}) == []
    out = h.send("standby-1", Op.ACK, seq=h.core.store.seq)
    reply = for_(out, "a")[0]
    assert reply.info["versions"]["w"] == 2  # the version its values are
    np.testing.assert_array_equal(reply.arrays()["w"], h.table("w"))
    np.testing.assert_array_equal(h.table("w"), 6.0)


@pytest.mark.parametrize("spec", ["int8:0", "sign:0", "int8:-8", "int8:12", "int8:16777216",
                                  "topk:0", "bogus", 3])
def test_bad_pull_codecs_are_refused_and_change_nothing(spec: Any) -> None:
    """Regression: pull codecs came from the wire unchecked (internal errors, or 256 MiB
    for one 100-byte pull naming int8:16777216)."""
    h = Harness(mode="async")
    h.hello("a")
    h.send("a", Op.INIT, {"w": np.zeros(4, np.float32)})
    out = h.send("a", Op.PULL, names=("w",), pull_codec=spec, have={"w": 0})
    assert [o.reply.error[0] for o in out] == ["bad_header"]


def test_many_distinct_pull_codecs_never_lock_anyone_out() -> None:
    """Regression: after 64 distinct pull-codec specs the server refused every new one."""
    h = Harness(mode="async")
    h.hello("a")
    h.send("a", Op.INIT, {"w": np.zeros(64, np.float32)})
    h.send("a", Op.PUSH, {"w": np.ones(64, np.float32)})
    for block in range(8, 8 * 101, 8):
        ok(h.send("a", Op.PULL, names=("w",), pull_codec=f"int8:{block}", have={"w": 0}))
    ok(h.send("a", Op.PULL, names=("w",), pull_codec="sign:16", have={"w": 0}))


def test_the_delta_cache_is_bounded_by_bytes() -> None:
    h = Harness(mode="async")
    h.core.reads = Reads(h.core.state, h.core.rounds, cache_bytes=1000)
    h.hello("a")
    h.send("a", Op.INIT, {"w": np.zeros(4096, np.float32)})
    for _ in range(5):
        h.send("a", Op.PUSH, {"w": np.ones(4096, np.float32)})
        ok(h.send("a", Op.PULL, names=("w",), pull_codec="int8", have={"w": 0}))
        assert h.core.reads._cache_bytes <= 1000 + 4096 + 64  # at most one entry over


def test_watches_are_kept_one_per_client() -> None:
    """Regression: every watch became a task on the standby until a takeover, and clients
    re-arming on every timeout piled them up."""
    h = Harness(mode="async", standby_of="tcp://127.0.0.1:1")
    for _ in range(50):
        assert h.send("a", Op.WATCH) == []
    h.send("b", Op.WATCH)
    assert len(h.core.state.waiters) == 2
    out = h.core.promote(0.0)
    assert sorted(o.peer for o in out) == ["a", "b"]
    assert all(o.reply.ok and o.reply.info["role"] == "primary" for o in out)


def test_most_closed_counts_job_rounds_not_table_rounds() -> None:
    """Regression: --checkpoint-rounds N counted per-table rounds, so with T tables it
    fired every N / T rounds."""
    h = Harness(mode="sync", workers=1)
    h.hello("a")
    tables = {f"t{i}": np.zeros(2, np.float32) for i in range(4)}
    h.send("a", Op.INIT, tables)
    for _ in range(9):
        ok(h.send("a", Op.PUSH_PULL, tables))
    assert h.core.rounds.most_closed() == 9 and h.core.counters["rounds"] == 36


def test_the_core_imports_neither_asyncio_nor_zmq() -> None:
    """The sans-IO parts (protocol, codecs, store, consistency, server core, client
    engine) reach neither asyncio nor zmq through any zps import."""
    shells = {"zps.server.app", "zps.server.follower", "zps.server.publisher",
              "zps.server.checkpoints", "zps.client.blocking", "zps.client.async_client",
              "zps.client.wire", "zps.transport", "zps.runtime"}
    roots = ["zps.server.core", "zps.client.engine", "zps.protocol", "zps.codecs",
             "zps.store", "zps.consistency"]
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = ROOT / (module.replace(".", "/") + ".py")
        if not path.exists():
            path = ROOT / module.replace(".", "/") / "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                top = name.split(".")[0]
                assert top not in ("asyncio", "zmq"), f"{module} imports {name}"
                if top == "zps" and name != "zps":
                    assert name not in shells, f"{module} imports the shell {name}"
                    todo.append(name)
    assert "zps.server.rounds" in seen and "zps.client.connect" in seen


def test_no_module_is_over_400_lines() -> None:
    long = [f"{p.relative_to(ROOT)} ({n})" for p in (ROOT / "zps").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 420]
    assert not long


def test_a_periodic_ack_does_not_let_go_of_the_snapshot_being_read() -> None:
    """Regression (review): a standby resyncing while it already held the primary's change
    number had its snapshot released by its own periodic ack, and asked again forever."""
    h = Harness(mode="async")
    h.send("standby-1", Op.HELLO, role="standby")
    h.hello("a")
    h.send("a", Op.INIT, {"w": np.zeros(8, np.float32)})
    manifest = ok(h.send("standby-1", Op.SNAPSHOT))[0].info["snapshot"]
    h.send("standby-1", Op.ACK, seq=manifest["seq"])  # the watchdog's ack, mid-transfer
    chunk = {"id": manifest["id"], "a": 0, "start": 0, "stop": 8}
    ok(h.send("standby-1", Op.SNAPSHOT_CHUNK, **chunk))
    h.send("standby-1", Op.ACK, seq=manifest["seq"], snapshot=manifest["id"])  # installed
    assert for_(h.send("standby-1", Op.SNAPSHOT_CHUNK, **chunk), "standby-1")[0].error


def test_a_worker_cannot_become_the_standby() -> None:
    """Regression (review): hello with role standby from a registered worker attached it
    as the standby, so with durable replication every update waited for acks forever."""
    h = Harness(mode="async")
    h.hello("a")
    error = for_(h.send("a", Op.HELLO, role="standby"), "a")[0].error
    assert error is not None and "cannot change" in error[1]
    assert h.core.replica.standby is None
