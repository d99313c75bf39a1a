"""The loop-driven ZeroMQ socket: every queued message is delivered, even after an error."""

from __future__ import annotations

import asyncio

import pytest
import zmq

from zps.errors import ConfigError
from zps.runtime import run
from zps.transport import DRAIN_BATCH, LoopSocket, check_endpoint


def test_a_failing_handler_does_not_strand_queued_messages() -> None:
    async def main() -> list[bytes]:
        ctx = zmq.Context()
        sender = ctx.socket(zmq.PAIR)
        receiver = ctx.socket(zmq.PAIR)
        sender.bind("inproc://t")
        receiver.connect("inproc://t")
        for body in (b"boom", b"one", b"two"):
            sender.send(body)
        got: list[bytes] = []
        done = asyncio.get_running_loop().create_future()

        def handle(frames: list[zmq.Frame]) -> None:
            body = frames[0].bytes
            if body == b"boom":
                raise RuntimeError("handler bug")
            got.append(body)
            if len(got) == 2:
                done.set_result(None)

        sock = LoopSocket(receiver, handle)
        await asyncio.wait_for(done, 10)
        sock.close()
        sender.close(linger=0)
        ctx.term()
        return got

    assert run(main()) == [b"one", b"two"]


def test_messages_sent_both_ways_are_all_received() -> None:
    async def main() -> int:
        ctx = zmq.Context()
        a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
        a.bind("inproc://u")
        b.connect("inproc://u")
        count = 0
        done = asyncio.get_running_loop().create_future()

        def echo(frames: list[zmq.Frame]) -> None:
            nonlocal count
            count += 1
            if count == 2000:
                done.set_result(None)
            elif count % 2:
                left.send([b"x"])
            else:
                right.send([b"y"])

        left, right = LoopSocket(a, echo), LoopSocket(b, echo)
        left.send([b"start"])
        await asyncio.wait_for(done, 20)
        left.close()
        right.close()
        ctx.term()
        return count

    assert run(main()) == 2000


@pytest.mark.parametrize("per_message", [None, 64])
def test_a_flood_does_not_starve_the_loop(per_message: int | None) -> None:
    """Regression: LoopSocket drained without a bound, so a flood of requests held off
    heartbeats and timers until it was all handled. A message carrying several requests
    (a batch: the handler says how many) counts as that many."""
    async def main() -> tuple[int, int]:
        ctx = zmq.Context()
        sender, receiver = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
        sender.bind("inproc://flood")
        receiver.connect("inproc://flood")
        for _ in range(1000):
            sender.send(b"x")
        handled: list[int] = []
        seen_by_timer: list[int] = []
        done = asyncio.get_running_loop().create_future()

        def handle(frames: list[zmq.Frame]) -> int | None:
            handled.append(1)
            if len(handled) == 1000:
                done.set_result(None)
            return per_message

        sock = LoopSocket(receiver, handle)  # its first drain is queued now
        asyncio.get_running_loop().call_soon(lambda: seen_by_timer.append(len(handled)))
        await asyncio.wait_for(done, 10)
        sock.close()
        sender.close(linger=0)
        ctx.term()
        return seen_by_timer[0], len(handled)

    between, total = run(main())
    assert between == DRAIN_BATCH // (per_message or 1) and total == 1000


def test_endpoints_are_checked_before_zeromq_sees_them() -> None:
    for good in ("tcp://127.0.0.1:0", "tcp://*:5570", "tcp://h:*", "ipc:///tmp/x", "inproc://a"):
        assert check_endpoint(good) == good
    for bad in ("tcp://127.0.0.1:99999", "tcp://h", "127.0.0.1:1", "tcp://:1", "tcp://h:-1",
                "ipc://"):
        with pytest.raises(ConfigError):
            check_endpoint(bad)
