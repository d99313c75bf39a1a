"""Calls that do not wait (``wait=False`` handles), replies into the caller's arrays
(``out=``) and per-table codecs, over real sockets."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import zps
from zps.client import Handle


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
