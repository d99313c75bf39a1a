"""The client engine without sockets: its sends decoded, replies fed back by hand."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from zps.client.api import ClientBase
from zps.client.calls import Call
from zps.client.engine import Engine
from zps.errors import ClosedError, ServerUnreachable, ZpsError
from zps.protocol import Op, Reply, Request, TensorMeta, decode_reply, decode_request, encode_reply


class Harness(ClientBase):
    """An engine (two endpoints per shard: the server, its standby) and what it sent."""

    def __init__(self, **config: Any) -> None:
        self._engine = Engine(["tcp://p:1"], heartbeat_interval=0, **config)
        self.now = 0.0
        self.sent: list[tuple[int, Request]] = []

    @property
    def engine(self) -> Engine:
        return self._engine

    def pump(self) -> list[tuple[int, Request]]:
        new = [(e, decode_request(f)) for e, f in self._engine.take_sends()]
        self.sent += new
        return new

    def answer(self, endpoint: int, request: Request, arrays: dict[str, np.ndarray] | None = None,
               **info: Any) -> None:
        arrays = arrays or {}
        reply = Reply(request.request_id, tuple(TensorMeta.of(n, a) for n, a in arrays.items()),
                      {"sid": f"s{endpoint}", "epoch": 1, **info}, None, tuple(arrays.values()))
        self._engine.receive(endpoint, decode_reply(encode_reply(reply)), self.now)

    def connect(self) -> None:
        call = self._engine.connect(self.now)
        for endpoint, request in self.pump():
            role = "primary" if endpoint == 0 else "standby"
            self.answer(endpoint, request, role=role, max_message_bytes=1 << 30)
        assert call.done and call.error is None

    def start(self, call: Call) -> Call:
        return self._engine.start(call, self.now)


def test_a_delta_pull_in_flight_during_a_failover_completes() -> None:
    """Regression: the pull was resent to the new primary still naming the version the
    client held, whose copy the failover had dropped, and raised ZpsError to the caller."""
    h = Harness(standbys=("tcp://s:2",), pull_codec="none")
    h.connect()
    assert [(e, r.op) for e, r in h.pump()] == [(1, Op.WATCH)]
    watch = h.sent[-1][1]
    init = h.start(h._init_call({"w": np.zeros(4, np.float32)}, None))
    (endpoint, request), = h.pump()
    h.answer(endpoint, request, {"w": np.zeros(4, np.float32)}, versions={"w": 0})
    assert init.done and init.error is None
    first = h.start(h._pull_call(None))
    (_, request), = h.pump()
    h.answer(0, request, {"w": np.full(4, 3.0, np.float32)}, versions={"w": 3})
    assert first.result()["w"].tolist() == [3.0] * 4
    second = h.start(h._pull_call(None))
    (_, asked), = h.pump()
    assert asked.options["have"] == {"w": 3}
    h.answer(1, watch, role="primary", epoch=2)  # the standby took over meanwhile
    sent = {r.op: (e, r) for e, r in h.pump()}
    assert set(sent) == {Op.HELLO, Op.WATCH}  # registers there before resending anything
    endpoint, hello = sent[Op.HELLO]
    assert endpoint == 1 and sent[Op.WATCH][0] == 0  # and watches the old primary
    h.answer(1, hello, role="primary", epoch=2)
    sent = h.pump()
    (endpoint, resent), = [s for s in sent if s[1].op == Op.PULL]
    assert endpoint == 1 and resent.request_id == asked.request_id
    assert "have" not in resent.options  # the copy it held is gone: the whole table
    h.answer(1, resent, {"w": np.full(4, 5.0, np.float32)}, versions={"w": 5}, epoch=2)
    assert second.result()["w"].tolist() == [5.0] * 4


def test_updates_carry_the_lowest_unfinished_request_id() -> None:
    h = Harness(max_inflight=4)
    h.connect()
    h.pump()
    init = h.start(h._init_call({f"t{i}": np.zeros(2, np.float32) for i in range(3)}, None))
    (_, request), = h.pump()
    h.answer(0, request, {f"t{i}": np.zeros(2, np.float32) for i in range(3)},
             versions={f"t{i}": 0 for i in range(3)})
    assert init.done
    first = h.start(h._push_call(Op.PUSH, {"t0": np.ones(2)}, None, None))
    second = h.start(h._push_call(Op.PUSH, {"t1": np.ones(2)}, None, None))
    (_, a), (_, b) = h.pump()
    assert a.watermark == a.request_id and b.watermark == a.request_id
    h.answer(0, a)
    assert first.done and not second.done
    third = h.start(h._push_call(Op.PUSH, {"t2": np.ones(2)}, None, None))
    (_, c), = h.pump()
    assert c.watermark == b.request_id  # the first finished: the watermark moved on
    h.answer(0, b)
    h.answer(0, c)
    assert second.done and third.done


def test_a_request_out_of_attempts_fails_its_call_only() -> None:
    h = Harness(timeout=1.0, retries=1)
    h.connect()
    stats = h.start(h._stats_call())
    assert [r.op for _, r in h.pump()] == [Op.STATS]
    h.now = 1.5
    h.engine.expire(h.now)
    assert stats.done and isinstance(stats.error, ServerUnreachable)  # stats: 1 attempt
    pushed = h.start(h._init_call({"w": np.zeros(2, np.float32)}, None))
    (_, first), = h.pump()
    h.now = 3.0
    h.engine.expire(h.now)
    (_, again), = h.pump()
    assert again.request_id == first.request_id  # resent with the same id
    h.now = 4.5
    h.engine.expire(h.now)
    with pytest.raises(ServerUnreachable, match="after 2 tries"):
        pushed.result()


def test_watches_are_re_armed_every_timeout_not_piled_up() -> None:
    h = Harness(standbys=("tcp://s:2",), timeout=1.0)
    h.connect()
    h.pump()
    for step in range(1, 6):
        h.now = float(step) + 0.01
        h.engine.expire(h.now)
        h.pump()
    watches = [r for e, r in h.sent if r.op == Op.WATCH]
    assert len(watches) == 6 and len(h.engine.failover._watches) == 1


def test_a_cancelled_delta_pull_does_not_block_the_next_ones() -> None:
    """Regression (review): a delta pull cancelled while it waited behind another became
    the active one when that finished, never completed, and held every later pull."""
    h = Harness(pull_codec="none")
    h.connect()
    init = h.start(h._init_call({"w": np.zeros(4, np.float32)}, None))
    (_, request), = h.pump()
    h.answer(0, request, {"w": np.zeros(4, np.float32)}, versions={"w": 0})
    assert init.done
    first = h.start(h._pull_call(None))
    waiting = h.start(h._pull_call(None))
    (_, asked), = h.pump()
    h.engine.finish_call(waiting, ZpsError("cancelled"))  # as AsyncClient does on cancel
    h.answer(0, asked, {"w": np.ones(4, np.float32)}, versions={"w": 1})
    assert first.done and first.error is None
    third = h.start(h._pull_call(None))
    (_, again), = h.pump()
    h.answer(0, again, versions={"w": 1}, delta={"w": [1, []]})
    assert third.result()["w"].tolist() == [1.0] * 4


def test_close_fails_delta_pulls_still_waiting_to_start() -> None:
    h = Harness(pull_codec="none")
    h.connect()
    h.start(h._init_call({"w": np.zeros(2, np.float32)}, None))
    (_, request), = h.pump()
    h.answer(0, request, {"w": np.zeros(2, np.float32)}, versions={"w": 0})
    calls = [h.start(h._pull_call(None)) for _ in range(3)]
    h.pump()
    h.engine.close()
    assert all(c.done and isinstance(c.error, ClosedError) for c in calls)
    assert h.pump() == []  # nothing sent after close


def test_a_hello_answered_by_the_old_primary_after_a_switch_does_not_hang_the_shard() -> None:
    """Regression (review): told not_registered, the client said hello to the primary; the
    standby took over before the answer came, so no hello went to the new primary and the
    shard's requests waited for ever."""
    h = Harness(standbys=("tcp://s:2",), timeout=1.0, retries=1)
    h.connect()
    (_, watch), = h.pump()
    h.start(h._init_call({"w": np.zeros(2, np.float32)}, None))
    (_, init), = h.pump()
    h.answer(0, init, {"w": np.zeros(2, np.float32)}, versions={"w": 0})
    pushed = h.start(h._push_call(Op.PUSH, {"w": np.ones(2)}, None, None))
    (_, push), = h.pump()
    h.engine.receive(0, Reply(push.request_id, info={"sid": "s0", "epoch": 1},
                              error=("not_registered", "declared dead")), h.now)
    (_, hello_old), = h.pump()
    assert hello_old.op == Op.HELLO
    h.answer(1, watch, role="primary", epoch=2)  # the standby takes over meanwhile
    sent = {r.op: (e, r) for e, r in h.pump()}
    h.answer(0, hello_old, role="primary")  # the old primary's late answer: ignored
    endpoint, hello_new = sent[Op.HELLO]
    assert endpoint == 1
    h.answer(1, hello_new, role="primary", epoch=2)
    (endpoint, resent), = [s for s in h.pump() if s[1].op == Op.PUSH]
    assert endpoint == 1 and resent.request_id == push.request_id
    h.answer(1, resent, epoch=2)
    assert pushed.done and pushed.error is None


def test_a_call_failed_in_an_expire_pass_sends_none_of_its_other_requests() -> None:
    """Regression (review): a push of two requests, the second resent after a
    registration: the pass that failed the call for the first still resent the second,
    and with nothing left in flight raised StopIteration."""
    h = Harness(timeout=1.0, retries=1, chunk_bytes=16)  # "w" travels as two parts
    h.connect()
    h.pump()
    h.start(h._init_call({"w": np.zeros(8, np.float32)}, None))
    for _, request in h.pump():
        h.answer(0, request, {m.name: np.zeros(m.shape, np.float32) for m in request.tensors})
    pushed = h.start(h._push_call(Op.PUSH, {"w": np.ones(8)}, None, None))
    (_, first), (_, second) = h.pump()
    h.now = 0.5
    h.engine.receive(0, Reply(second.request_id, info={"sid": "s0", "epoch": 1},
                              error=("not_registered", "send hello again")), h.now)
    (_, hello), = h.pump()
    h.answer(0, hello, role="primary")
    assert [r.request_id for _, r in h.pump()] == [second.request_id]  # resent at 0.5
    h.now = 1.2
    h.engine.expire(h.now)  # the first is resent, its last attempt
    assert [r.request_id for _, r in h.pump()] == [first.request_id]
    h.now = 2.3
    h.engine.expire(h.now)  # the first runs out: the call fails, the second goes nowhere
    assert h.pump() == []
    with pytest.raises(ServerUnreachable):
        pushed.result()


def test_closing_fails_calls_not_sent_and_lets_the_goodbye_past_max_inflight() -> None:
    h = Harness(max_inflight=1)
    h.connect()
    h.pump()
    h.start(h._init_call({"a": np.zeros(2, np.float32), "b": np.zeros(2, np.float32)}, None))
    (_, request), = h.pump()
    h.answer(0, request, {"a": np.zeros(2, np.float32), "b": np.zeros(2, np.float32)})
    sent = h.start(h._push_call(Op.PUSH_PULL, {"a": np.ones(2)}, None, None))
    queued = h.start(h._push_call(Op.PUSH_PULL, {"b": np.ones(2)}, None, None))
    (_, waiting), = h.pump()  # max_inflight: the second waits
    h.engine.begin_close()
    assert queued.done and isinstance(queued.error, ClosedError) and not sent.done
    bye = h.start(h._bye_call())
    assert [r.op for _, r in h.pump()] == [Op.BYE]  # not held behind the one in flight
    # The goodbye made the server forget the client: no hello again, the call fails.
    h.engine.receive(0, Reply(waiting.request_id, info={"sid": "s0", "epoch": 1},
                              error=("not_registered", "this client said goodbye")), h.now)
    assert isinstance(sent.error, ClosedError) and h.pump() == []
    h.answer(0, h.sent[-1][1])
    assert bye.done and bye.error is None


def test_closing_sends_the_rest_of_a_call_already_partly_sent() -> None:
    """Regression (review): a push split in two with one part sent was failed as "not
    sent" on close, leaving half of it applied."""
    h = Harness(max_inflight=1, chunk_bytes=16)  # "w" travels as two parts
    h.connect()
    h.pump()
    h.start(h._init_call({"w": np.zeros(8, np.float32)}, None))
    while sent := h.pump():
        for _, request in sent:
            h.answer(0, request, {m.name: np.zeros(m.shape, np.float32)
                                  for m in request.tensors})
    pushed = h.start(h._push_call(Op.PUSH, {"w": np.ones(8)}, None, None))
    (_, first), = h.pump()  # max_inflight: the second part waits
    h.engine.begin_close()
    bye = h.start(h._bye_call())
    assert not pushed.done
    (_, second), (_, goodbye) = h.pump()  # the rest first, then the goodbye
    assert second.op is Op.PUSH and goodbye.op is Op.BYE
    h.answer(0, first)
    h.answer(0, second)
    h.answer(0, goodbye)
    assert pushed.done and pushed.error is None and bye.done
