"""The loop-driven ZeroMQ socket: every queued message is delivered, even after an error."""

from __future__ import annotations

import asyncio

import zmq

from zps.runtime import run
from zps.transport import LoopSocket


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
