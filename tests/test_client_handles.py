"""Calls that do not wait (``wait=False`` handles), replies into the caller's arrays
(``out=``) and per-table codecs, over real sockets."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest
import zmq

import zps
from zps.client import Handle
from zps.protocol import PROTOCOL_VERSION, Limits

from .test_client_server import fake_server


def test_handles_keep_several_calls_in_flight_and_finish_in_any_order(start_server: Any) -> None:
    server = start_server(mode="async")
    with zps.Client([server.address]) as ps:
        ps.init({"a": np.zeros(4, np.float32), "b": np.zeros(4, np.float32)})
        handles = [ps.push({"a": np.ones(4)}, wait=False) for _ in range(5)]
        assert all(isinstance(h, Handle) for h in handles)
        pulled = ps.push_pull({"b": np.full(4, 2.0)}, wait=False)
        np.testing.assert_array_equal(pulled.wait()["b"], 2.0)
        assert [h.wait() for h in reversed(handles)] == [None] * 5
        assert all(h.done() for h in handles)
        rows = ps.pull(["a"], wait=False)
        np.testing.assert_array_equal(rows.wait()["a"], 5.0)


def test_out_receives_into_the_callers_arrays(start_server: Any) -> None:
    server = start_server(mode="async")
    with zps.Client([server.address], chunk_bytes=64) as ps:  # "w" travels in parts
        ps.init({"w": np.arange(100, dtype=np.float32), "v": np.zeros(3, np.float32)})
        mine = np.empty(100, np.float32)
        got = ps.pull(out={"w": mine})
        assert got["w"] is mine and list(got) == ["w"]
        np.testing.assert_array_equal(mine, np.arange(100))
        again = ps.push_pull({"w": np.ones(100), "v": np.ones(3)}, out={"w": mine})
        assert again["w"] is mine and again["v"].shape == (3,)
        np.testing.assert_array_equal(mine, np.arange(100) + 1)


@pytest.mark.parametrize("bad,message", [
    (np.empty(99, np.float32), r"shape \[100\]"),
    (np.empty(100, np.float64), "float32"),
    (np.empty(200, np.float32)[::2], "C-contiguous"),
    ([0.0] * 100, "got list"),
])
def test_a_wrong_out_array_is_refused_before_anything_is_sent(start_server: Any, bad: Any,
                                                              message: str) -> None:
    server = start_server(mode="async")
    with zps.Client([server.address]) as ps:
        ps.init({"w": np.zeros(100, np.float32)})
        with pytest.raises(zps.ShapeMismatchError, match=message):
            ps.push_pull({"w": np.ones(100)}, out={"w": bad})
        with pytest.raises(zps.ConfigError, match="does not return"):
            ps.push_pull({"w": np.ones(100)}, out={"x": np.empty(1)})
        np.testing.assert_array_equal(ps.pull()["w"], 0.0)  # nothing was pushed


def test_a_table_can_travel_through_its_own_codec(start_server: Any) -> None:
    server = start_server(mode="async")
    with zps.Client([server.address]) as ps:
        ps.init({"exact": np.zeros(256, np.float32), "small": np.zeros(256, np.float32)})
        ps.set_codec(["small"], "int8")
        delta = np.linspace(-1, 1, 256, dtype=np.float32)
        got = ps.push_pull({"exact": delta, "small": delta})
        np.testing.assert_array_equal(got["exact"], delta)  # the client's codec: none
        assert 0 < np.abs(got["small"] - delta).max() < 0.02  # int8: close, not exact
        with pytest.raises(zps.ConfigError, match="codec"):
            ps.set_codec(["small"], "int3")


def test_a_client_that_never_called_init_pulls_what_the_servers_hold(start_server: Any) -> None:
    servers = [start_server(mode="async").address for _ in range(2)]
    big = np.arange(1000 * 3, dtype=np.float64).reshape(1000, 3)  # split over both servers
    with zps.Client(servers, chunk_bytes=4096) as trainer:
        trainer.init({"big": big, "small": np.ones(4, np.float32), "scalar": np.float32(2)})
        trainer.init_rows("emb", dim=2)
        trainer.push({"small": np.ones(4)})
    with zps.Client(servers, chunk_bytes=4096, role="observer") as evaluator:
        everything = evaluator.pull()  # no init: it asks the servers
        assert sorted(everything) == ["big", "scalar", "small"]  # dense tables only
        np.testing.assert_array_equal(everything["big"], big)
        np.testing.assert_array_equal(everything["small"], 2.0)
        assert everything["scalar"].shape == () and everything["scalar"] == 2
        assert evaluator.pull("small")["small"].dtype == np.float32
        with pytest.raises(zps.UnknownTableError, match="nope"):
            evaluator.pull(["nope"])
    with zps.Client(servers, chunk_bytes=4096) as late:  # knows one table, learns the rest
        late.init({"small": np.zeros(4, np.float32)})
        np.testing.assert_array_equal(late.pull(["big"])["big"], big)


def test_closing_with_a_call_waiting_in_a_round_registers_nothing_again(
        start_server: Any) -> None:
    """Regression (review): the goodbye made the server forget the client and fail the
    call waiting in its round with not_registered; the client said hello again, and the
    other worker's rounds waited for that ghost until it was declared dead."""
    server = start_server(mode="sync", workers=2)
    a = zps.Client([server.address], timeout=5, retries=0)
    with zps.Client([server.address], timeout=5, retries=0) as b:
        a.init({"w": np.zeros(2, np.float32)})
        b.init({"w": np.zeros(2, np.float32)})
        waiting = a.push_pull({"w": np.ones(2)}, wait=False)  # its round waits for b
        a.close()
        with pytest.raises(zps.ClosedError, match="closed before push_pull was answered"):
            waiting.wait()
        workers = server.run(lambda: [m.client_id for m in server.server.core.members.workers()])
        assert workers == [b.client_id]
        for _ in range(2):  # b alone now: its rounds close at once
            b.push_pull({"w": np.ones(2)})


def test_replies_go_into_the_callers_arrays_by_name() -> None:
    """Regression (review): arrays received in place were matched by position, so a reply
    naming its tables in another order filled them crosswise."""
    a, b = np.full(2, 1, np.float32), np.full(2, 2, np.float32)

    def serve(router: zmq.Socket) -> None:
        while True:
            frames = router.recv_multipart()
            peer, head = frames[0], msgpack.unpackb(frames[1])
            reply = {"v": PROTOCOL_VERSION, "r": head["r"], "i": {"sid": "fake"}}
            if head["op"] in ("init", "pull"):  # b first
                reply["t"] = [["b", "float32", [2], 8], ["a", "float32", [2], 8]]
                router.send_multipart([peer, msgpack.packb(reply), b.tobytes(), a.tobytes()])
                continue
            router.send_multipart([peer, msgpack.packb(reply)])
            if head["op"] == "bye":
                return

    with fake_server(serve) as address, zps.Client([address], heartbeat_interval=0) as ps:
        ps.init({"a": np.zeros(2, np.float32), "b": np.zeros(2, np.float32)})
        got = ps.pull(["a", "b"])
        assert got["a"].tolist() == [1, 1] and got["b"].tolist() == [2, 2]


def test_a_server_with_a_small_message_limit_takes_small_requests(start_server: Any) -> None:
    server = start_server(mode="async", limits=Limits(max_message_bytes=60_000))
    with zps.Client([server.address]) as ps:
        ps.init({"w": np.zeros(16, np.float32)})
        ps.push({"w": np.ones(16)})
        assert ps.pull()["w"].tolist() == [1] * 16
        with pytest.raises(zps.RejectedError, match="exceeds the server's limit"):
            ps.init({"big": np.zeros(15_000, np.float32)})  # 60,000 bytes and a header


@pytest.mark.parametrize("bad", [{"max_inflight": 0}, {"max_inflight": 1.5}, {"timeout": 0},
                                 {"timeout": float("nan")}, {"retries": -1},
                                 {"chunk_bytes": 0}, {"connect_timeout": -1},
                                 {"heartbeat_interval": -1}])
def test_client_settings_out_of_range_are_refused(bad: dict[str, Any]) -> None:
    (name, _), = bad.items()
    with pytest.raises(zps.ConfigError, match=name):
        zps.Client(["tcp://127.0.0.1:1"], **bad)
