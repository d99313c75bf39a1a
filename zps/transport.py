"""ZeroMQ sockets driven by the event loop directly, without ``zmq.asyncio`` futures.

``zmq.asyncio`` wraps every send and receive in a future, which costs more than a small
message's round trip on loopback. Here a plain socket's file descriptor is watched with
``loop.add_reader``; when it fires, every queued message is drained without blocking and
handed to a callback. ZeroMQ's descriptor is edge-triggered, so after each send the
socket's events are checked again rather than trusting the next wake-up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import zmq

OnMessage = Callable[[list[zmq.Frame]], None]

# Plain ints: pyzmq's enum wrappers cost more than a small message on the hot path.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)


class LoopSocket:
    """A non-blocking ZeroMQ socket whose incoming messages go to ``on_message``.

    Sends never block: a socket at its high-water mark raises ``zmq.Again`` to the caller.
    ``close()`` stops watching the descriptor and closes the socket.
    """

    def __init__(self, sock: zmq.Socket, on_message: OnMessage,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.socket = sock
        self._on_message = on_message
        self._loop = loop or asyncio.get_running_loop()
        self._fd = sock.getsockopt(zmq.FD)
        self._scheduled = False
        self._closed = False
        self._loop.add_reader(self._fd, self._drain)
        self._schedule()  # messages may already be queued

    def send(self, frames: Sequence[Any]) -> None:
        """Queue a multipart message (buffers of 64 KiB or more are not copied)."""
        sock = self.socket
        sock.send_multipart(frames, _NOBLOCK, copy=False)
        # Sending may have consumed the descriptor's wake-up for a message that arrived
        # meanwhile: look now, and drain on the next turn only if something is waiting.
        if sock.getsockopt(_EVENTS) & _POLLIN:
            self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled and not self._closed:
            self._scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        sock = self.socket
        while not self._closed and sock.getsockopt(_EVENTS) & _POLLIN:
            try:
                frames = sock.recv_multipart(_NOBLOCK, copy=False)
            except zmq.Again:
                break
            self._on_message(frames)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)
        self.socket.close(linger=0)
