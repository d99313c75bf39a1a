"""Workers joining, heartbeating, leaving and dying, with real sockets and processes."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import zps
import zps.runtime
from zps.server.members import Ranks

from .conftest import ROOT, python_env, wait_for

# A worker that registers, pushes once for round 1 and then hangs until killed.
HANGING_WORKER = """
import sys, numpy as np, zps
ps = zps.Client([sys.argv[1]], heartbeat_interval=0.1)
ps.init({"w": np.zeros(2)})
ps.push({"w": np.ones(2)})
print("pushed", flush=True)
sys.stdin.read()
"""


def test_killed_worker_is_declared_dead_and_the_round_completes(start_server) -> None:
    server = start_server(mode="sync", workers=2, heartbeat_interval=0.1, liveness=3)
    with zps.Client([server.address], heartbeat_interval=0.1) as ps:
        ps.init({"w": np.zeros(2)})
        proc = subprocess.Popen([sys.executable, "-c", HANGING_WORKER, server.address],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                env=python_env(), cwd=ROOT)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "pushed"
            # Round 2 needs the hanging worker; it dies without a word.
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            result = ps.push_pull({"w": np.full(2, 3.0)})  # round 1: (1 + 3) / 2
            np.testing.assert_array_equal(result["w"], 2)
            result = ps.push_pull({"w": np.full(2, 4.0)})  # round 2 closes once it is dead
            np.testing.assert_array_equal(result["w"], 6)
        finally:
            proc.kill()
            proc.wait()
        stats = ps.stats()[0]
    assert stats["counters"]["dead"] == 1
    assert [(m["role"], m["state"]) for m in stats["members"]] == [("worker", "live")]
    assert [d["state"] for d in stats["departed"]] == ["declared dead (no heartbeat)"]


def test_heartbeats_keep_an_idle_worker_alive(start_server) -> None:
    server = start_server(mode="sync", heartbeat_interval=0.1, liveness=3)
    with zps.Client([server.address], heartbeat_interval=0.05) as ps:
        ps.init({"w": np.zeros(2)})

        def heartbeats() -> int:
            return server.run(lambda: server.server.core.counters["heartbeats"])

        # Idle (no calls) for well past the 0.3 s liveness deadline, counted in heartbeats.
        wait_for(lambda: heartbeats() >= 12, what="heartbeats")
        assert server.run(lambda: server.server.core.counters["dead"]) == 0
        np.testing.assert_array_equal(ps.push_pull({"w": np.ones(2)})["w"], 1)


def test_observer_never_holds_a_round(start_server) -> None:
    server = start_server(mode="sync")
    with zps.Client([server.address]) as worker, \
            zps.Client([server.address], role="observer") as observer:
        worker.init({"w": np.zeros(2)})
        observer.init({"w": np.zeros(2)})
        np.testing.assert_array_equal(worker.push_pull({"w": np.ones(2)})["w"], 1)
        np.testing.assert_array_equal(observer.pull()["w"], 1)
        with pytest.raises(zps.RejectedError, match="not a registered worker"):
            observer.push({"w": np.ones(2)})


def test_async_client_concurrent_requests(start_server) -> None:
    server = start_server(mode="async")

    async def main() -> np.ndarray:
        async with zps.AsyncClient([server.address]) as ps:
            await ps.init({"w": np.zeros(3)})
            await asyncio.gather(*(ps.push({"w": np.ones(3)}) for _ in range(50)))
            return (await ps.pull())["w"]

    np.testing.assert_array_equal(zps.runtime.run(main()), 50)


def test_blocking_client_inside_a_running_loop(start_server) -> None:
    server = start_server(mode="async")

    async def notebook_cell() -> np.ndarray:
        # Jupyter runs cells inside an event loop; the blocking client must still work.
        with zps.Client([server.address]) as ps:
            ps.init({"w": np.zeros(2)})
            return ps.push_pull({"w": np.ones(2)})["w"]

    np.testing.assert_array_equal(asyncio.run(notebook_cell()), 1)


def test_client_used_from_another_thread_after_creation(start_server) -> None:
    server = start_server(mode="async")
    ps = zps.Client([server.address])
    try:
        ps.init({"w": np.zeros(2)})
        out: dict[str, np.ndarray] = {}
        t = threading.Thread(target=lambda: out.update(ps.push_pull({"w": np.ones(2)})))
        t.start()
        t.join(timeout=20)
        np.testing.assert_array_equal(out["w"], 1)
    finally:
        ps.close()
    assert not any(th.name.startswith("zps-") for th in threading.enumerate())


REJOINING_WORKER = """
import sys, numpy as np, zps
ps = zps.Client([sys.argv[1]], client_id="w-restart", heartbeat_interval=0.1)
print(ps.init({"w": np.zeros(2)})["w"][0], flush=True)
print(ps.push_pull({"w": np.full(2, 3.0)})["w"][0], flush=True)
sys.stdin.read()
"""


def test_killed_worker_restarts_with_its_id_and_rejoins(start_server) -> None:
    server = start_server(mode="sync", workers=2, heartbeat_interval=0.1, liveness=3)
    with zps.Client([server.address], heartbeat_interval=0.1) as ps:
        ps.init({"w": np.zeros(2)})

        def start() -> subprocess.Popen[str]:
            return subprocess.Popen([sys.executable, "-c", REJOINING_WORKER, server.address],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                    env=python_env(), cwd=ROOT)

        first = start()
        try:
            assert first.stdout is not None and first.stdout.readline().strip() == "0.0"
            ps.push({"w": np.ones(2)})  # round 1: (1 + 3) / 2
            assert first.stdout.readline().strip() == "2.0"
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            wait_for(lambda: server.run(lambda: server.server.core.counters["dead"]) == 1,
                     what="the killed worker to be declared dead")
            second = start()  # same worker id, new process: pulls the current parameters
            try:
                assert second.stdout is not None
                assert second.stdout.readline().strip() == "2.0"
                np.testing.assert_array_equal(ps.push_pull({"w": np.ones(2)})["w"], 4)
                assert second.stdout.readline().strip() == "4.0"  # (1 + 3) / 2 more
            finally:
                second.kill()
                second.wait()
        finally:
            first.kill()
            first.wait()


def test_ranks_are_assigned_at_hello_and_kept_for_a_returning_id(start_server) -> None:
    server = start_server(mode="async", workers=3)
    first = zps.Client([server.address], client_id="a")
    second = zps.Client([server.address], client_id="b")
    assert (first.rank, second.rank, first.num_workers) == (0, 1, 3)
    first.close()  # "a" leaves; "c" replaces it and takes the free rank 0
    with zps.Client([server.address], client_id="c") as third:
        assert third.rank == 0
        again = zps.Client([server.address], client_id="a")  # back: rank 0 is taken
        assert again.rank == 2
        again.close()
    with zps.Client([server.address], client_id="a") as back:
        assert back.rank == 2  # its own rank again, now that nobody holds it
        with zps.Client([server.address], rank=7) as given:
            assert given.rank == 7
        observer = zps.Client([server.address], role="observer")
        assert observer.rank is None
        observer.close()
        ranks = {m["id"]: m["rank"] for m in back.stats()[0]["members"]}
        assert ranks["a"] == 2 and ranks["b"] == 1
    second.close()


live_and_wanted = st.lists(st.tuples(st.sampled_from("abcdefgh"), st.booleans(),
                                     st.none() | st.integers(0, 5)), max_size=40)


@given(live_and_wanted)
def test_auto_ranks_of_live_workers_never_collide(events: list[tuple[str, bool, int | None]],
                                                  ) -> None:
    ranks, live = Ranks(), set()
    for client, joins, wanted in events:
        if not joins:
            live.discard(client)
            continue
        previous = ranks.get(client)
        held = {ranks.get(c) for c in live if c != client}
        rank = ranks.assign(client, wanted, live | {client})
        live.add(client)
        if wanted is not None:
            assert rank == wanted
        else:
            assert rank not in held
            assert rank == previous or previous is None or previous in held
            assert rank == previous or rank <= len(held)  # else the lowest free one


def test_a_rank_held_before_is_kept_if_free_and_only_the_first_server_assigns(
        start_server) -> None:
    ranks = Ranks()
    assert ranks.assign("new", None, {"new"}) == 0  # a promoted standby knew nobody
    assert ranks.assign("back", None, {"new", "back"}, hint=0) == 1  # 0 is taken now
    assert ranks.assign("other", None, {"new", "back", "other"}, hint=5) == 5  # free: kept
    first, second = start_server(mode="async", workers=2), start_server(mode="async",
                                                                         workers=2)
    with zps.Client([first.address, second.address]) as a, \
            zps.Client([first.address, second.address]) as b:
        assert {a.rank, b.rank} == {0, 1}
        on_second = {m["rank"] for m in a.stats()[1]["members"]}
        assert on_second == {None}  # the second server gives no ranks of its own
