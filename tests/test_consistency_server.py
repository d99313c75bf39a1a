"""Consistency modes, stragglers, rules and server optimizers through real sockets."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import zps

from .conftest import ServerThread, wait_for


def counter(server: ServerThread, name: str) -> int:
    return server.run(lambda: server.server.core.counters[name])


def clients(server: ServerThread, n: int, **kw: object) -> list[zps.Client]:
    made = [zps.Client([server.address], client_id=f"w{i}", **kw) for i in range(n)]
    for ps in made:
        ps.init({"w": np.zeros(2, np.float32)})
    return made


def close_all(made: list[zps.Client]) -> None:
    for ps in made:
        ps.close()


@pytest.mark.parametrize(("rule", "expected"), [
    ("mean", (1 + 2 + 1e6) / 3), ("median", 2.0), ("trimmed:0.1", 2.0),
    ("weighted", (1 * 1 + 2 * 1 + 1e6 * 2) / 4),
])
def test_aggregation_rule_through_the_server(start_server, rule: str, expected: float) -> None:
    server = start_server(mode="sync", workers=3, aggregate=rule)
    made = clients(server, 3)
    try:
        for ps, value, weight in zip(made, (1.0, 2.0, 1e6), (1, 1, 2), strict=True):
            ps.push({"w": np.full(2, value)}, weight=weight)
        got = made[0].pull()["w"]
    finally:
        close_all(made)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_quorum_keeps_going_with_a_stalled_worker(start_server) -> None:
    server = start_server(mode="sync", workers=3, quorum=2)
    fast_a, fast_b, stalled = clients(server, 3)
    try:
        for step in range(1, 6):
            fast_a.push({"w": np.ones(2)})
            got = fast_b.push_pull({"w": np.ones(2)})["w"]
            np.testing.assert_array_equal(got, step)  # mean of two ones, every round
        # The stalled worker wakes up with an update computed from round 0: dropped.
        stalled.push({"w": np.full(2, 100.0)})
        np.testing.assert_array_equal(stalled.pull()["w"], 5)
        assert counter(server, "dropped") == 1
        stats = fast_a.stats()[0]
    finally:
        close_all([fast_a, fast_b, stalled])
    straggles = {m["id"]: m["straggles"] for m in stats["members"]}
    assert straggles["w2"] == 5 and straggles["w0"] == straggles["w1"] == 0


def test_round_timeout_closes_without_the_missing_worker(start_server) -> None:
    server = start_server(mode="sync", workers=2, round_timeout=0.2, heartbeat_interval=0.05)
    worker, absent = clients(server, 2)
    try:
        np.testing.assert_array_equal(worker.push_pull({"w": np.full(2, 4.0)})["w"], 4)
        assert counter(server, "timeouts") >= 1
        stats = worker.stats()[0]
    finally:
        close_all([worker, absent])
    assert {m["id"]: m["straggles"] for m in stats["members"]}["w1"] >= 1


def test_ssp_never_lets_the_fastest_read_more_than_k_ahead(start_server) -> None:
    k = 2
    server = start_server(mode=f"ssp:{k}")
    fast, slow = clients(server, 2)
    reads: list[int] = []

    def run_fast() -> None:
        for _ in range(8):
            fast.push_pull({"w": np.ones(2)})
            reads.append(1)

    runner = threading.Thread(target=run_fast)
    try:
        runner.start()
        # Clock k + 1 reached, and its read held: the slow worker is still at 0.
        wait_for(lambda: counter(server, "pushes") == k + 1, what="the fast worker's pushes")
        wait_for(lambda: server.run(lambda: len(server.server.core.state.waiters)) == 1,
                 what="the fast worker to be held")
        assert len(reads) == k
        slow.push_pull({"w": np.ones(2)})  # slow reaches clock 1: fast may go one further
        wait_for(lambda: counter(server, "pushes") == k + 3, what="one more fast step")
        assert len(reads) == k + 1
        slow.close()  # a departed worker never holds the others
        runner.join(timeout=20)
        assert len(reads) == 8
    finally:
        runner.join(timeout=20)
        fast.close()
        slow.close()


def test_staleness_aware_rates_on_a_scripted_sequence(start_server) -> None:
    server = start_server(mode="async", lr_rule="staleness")
    reader, writer = clients(server, 2)
    try:
        for _ in range(3):  # three fresh updates land after the reader's read (version 0)
            writer.push_pull({"w": np.ones(2)})
        # 3 versions behind: eta = 1/3, so +6 becomes +2.
        np.testing.assert_array_equal(reader.push_pull({"w": np.full(2, 6.0)})["w"], 5)
        # Fresh read: the next push is 0 versions behind, applied in full.
        np.testing.assert_array_equal(reader.push_pull({"w": np.full(2, 6.0)})["w"], 11)
    finally:
        close_all([reader, writer])


def test_server_side_sgd_with_momentum(start_server) -> None:
    server = start_server(mode="sync")
    with zps.Client([server.address]) as ps:
        ps.init({"w": np.zeros(2, np.float32)}, optimizer={"name": "sgd", "lr": 0.5,
                                                           "momentum": 0.5})
        np.testing.assert_allclose(ps.push_pull({"w": np.ones(2)})["w"], -0.5)
        np.testing.assert_allclose(ps.push_pull({"w": np.ones(2)})["w"], -1.25)
        assert ps.stats()[0]["tables"][0]["optimizer"]["name"] == "sgd"
        with pytest.raises(zps.RejectedError, match="optimizer"):
            ps.init({"v": np.zeros(1)}, optimizer={"name": "lion", "lr": 1})


def test_ssp_and_quorum_flags_reach_the_server(start_server) -> None:
    server = start_server(mode="ssp:3", lr_rule="loss")
    with zps.Client([server.address]) as ps:
        assert ps.mode == "ssp:3"
        ps.init({"w": np.zeros(1)})
        ps.push({"w": np.ones(1)}, loss=2.0)
        np.testing.assert_array_equal(ps.pull()["w"], 1)


def test_a_worker_that_only_pushes_is_held_one_round_ahead(start_server) -> None:
    server = start_server(mode="sync", workers=2)
    eager, other = clients(server, 2)
    done: list[int] = []

    def push_three() -> None:
        for i in range(3):
            eager.push({"w": np.ones(2)})
            done.append(i)

    runner = threading.Thread(target=push_three)
    try:
        runner.start()
        # Round 1 is open with its push; the second push (round 2) is held until round 1
        # closes, so at most one round is ever queued.
        wait_for(lambda: counter(server, "pushes") == 2, what="two pushes")
        assert done == [0]
        other.push({"w": np.ones(2)})
        wait_for(lambda: len(done) == 2, what="the held push to be acknowledged")
        other.push({"w": np.ones(2)})
        runner.join(timeout=20)
        assert done == [0, 1, 2]
    finally:
        runner.join(timeout=20)
        close_all([eager, other])


def test_bad_weights_and_optimizer_conflicts_are_refused(start_server) -> None:
    server = start_server(mode="sync")
    with zps.Client([server.address]) as ps:
        ps.init({"w": np.zeros(2)}, optimizer={"name": "adam", "lr": 0.1})
        with pytest.raises(zps.RejectedError, match="weight"):
            ps.push({"w": np.ones(2)}, weight=-1)
        with pytest.raises(zps.ShapeMismatchError, match="optimizer"):
            ps.init({"w": np.zeros(2)})  # a worker that would push deltas, not gradients
        ps.init({"w": np.zeros(2)}, optimizer={"name": "adam", "lr": 0.1})
        assert counter(server, "pushes") == 0


def test_a_worker_declared_dead_while_alive_registers_again(start_server) -> None:
    server = start_server(mode="sync", heartbeat_interval=0.05, liveness=2)
    with zps.Client([server.address], heartbeat_interval=0) as ps:  # no heartbeats
        ps.init({"w": np.zeros(2)})
        wait_for(lambda: counter(server, "dead") == 1, what="the silent worker to be dead")
        np.testing.assert_array_equal(ps.push_pull({"w": np.ones(2)})["w"], 1)
        assert server.run(lambda: server.server.core.members.get(ps.client_id)) is not None
