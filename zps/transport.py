"""ZeroMQ sockets driven by the event loop directly, without ``zmq.asyncio`` futures.

``zmq.asyncio`` wraps every send and receive in a future, which costs more than a small
message's round trip on loopback. Here a plain socket's file descriptor is watched with
``loop.add_reader``; when it fires, every queued message is drained without blocking and
handed to a callback. ZeroMQ's descriptor is edge-triggered, so after each send the
socket's events are checked again rather than trusting the next wake-up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

import zmq
import zmq.backend

from zps.errors import ConfigError

log = logging.getLogger("zps.transport")

# Handles one message; may return how many requests it carried (a batch), else counts 1.
OnMessage = Callable[[list[zmq.Frame]], int | None]

# Plain ints and pyzmq's Cython methods: the enum arithmetic inside pyzmq's multipart
# helpers costs more than a small message's whole trip on loopback.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_RCVMORE = int(zmq.RCVMORE)
_NOBLOCK = int(zmq.NOBLOCK)
_NOBLOCK_MORE = int(zmq.NOBLOCK) | int(zmq.SNDMORE)
_send = zmq.backend.Socket.send
_recv = zmq.backend.Socket.recv
_get: Callable[[zmq.Socket, int], int] = zmq.backend.Socket.get  # type: ignore[assignment]
set_option: Callable[[zmq.Socket, int, int], None] = zmq.backend.Socket.set  # type: ignore[assignment]

# Frames at least this large are sent zero-copy; smaller ones are cheaper to copy.
ZERO_COPY_BYTES = 64 * 1024
# Requests handled per wake-up before other callbacks (timers, other sockets) get a turn
# (a batch counts as the requests in it: the primary's heartbeats must not wait long).
DRAIN_BATCH = 256


def _nbytes(frame: Any) -> int:
    if isinstance(frame, bytes):
        return len(frame)
    if isinstance(frame, zmq.Frame):
        return ZERO_COPY_BYTES  # already a frame: pass it as it is
    return memoryview(frame).nbytes


def send_frames(sock: zmq.Socket, frames: Sequence[Any]) -> None:
    """Send a multipart message without blocking (``zmq.Again`` at the high-water mark)."""
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        _send(sock, frame, _NOBLOCK_MORE if i < last else _NOBLOCK,
              _nbytes(frame) < ZERO_COPY_BYTES, False)


def connect(sock: zmq.Socket, address: str) -> None:
    """``sock.connect(address)``; a malformed address is a ``ConfigError`` saying so."""
    try:
        check_endpoint(address)
    except ConfigError:
        raise ConfigError(f"invalid server address {address!r}: use tcp://HOST:PORT with a "
                          "port from 0 to 65535") from None
    try:
        sock.connect(address)
    except zmq.ZMQError as exc:
        raise ConfigError(
            f"invalid server address {address!r} ({exc.strerror}); use tcp://HOST:PORT"
        ) from None


def check_endpoint(address: str, what: str = "address") -> str:
    """``address`` if it is a usable ZeroMQ endpoint (``tcp://HOST:PORT`` with PORT in
    0..65535 or ``*``, ``ipc://``, ``inproc://``); else a ``ConfigError`` that says why.
    ZeroMQ itself would take port 99999 as 34463 (modulo 65536) without a word."""
    if address.startswith(("ipc://", "inproc://")) and len(address.split("://", 1)[1]) > 0:
        return address
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    if not address.startswith("tcp://") or not host or not (
            port == "*" or (port.isdigit() and int(port) <= 65535)):
        raise ConfigError(f"{what} {address!r} must look like tcp://HOST:PORT with a port "
                          "from 0 to 65535 (or *)")
    return address


def bind(sock: zmq.Socket, address: str, what: str) -> str:
    """Bind ``sock`` to ``address`` (port 0 or * picks a free one) and return the endpoint
    actually bound; ``ConfigError`` naming ``what`` and the address if it cannot."""
    check_endpoint(address, what)
    endpoint = address[:-2] + ":*" if address.startswith("tcp://") and address.endswith(":0") \
        else address
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        raise ConfigError(f"cannot bind {what} to {address}: {exc.strerror}") from None
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


def open_socket(context: zmq.Context, kind: int, address: str,
                **options: int | bytes) -> zmq.Socket:
    """A ``kind`` socket (LINGER 0, then ``options`` as ZMQ option names) connected to
    ``address``; closed again if the address is malformed (``ConfigError``)."""
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        for name, value in options.items():
            sock.setsockopt(getattr(zmq, name), value)
        connect(sock, address)
    except BaseException:
        sock.close(linger=0)
        raise
    return sock


def readable(sock: zmq.Socket) -> bool:
    """True if a message is queued on ``sock`` (also re-arms its edge-triggered descriptor)."""
    return bool(_get(sock, _EVENTS) & _POLLIN)


def recv_frame(sock: zmq.Socket) -> zmq.Frame:
    """Receive one frame of the current message, zero-copy (``zmq.Again`` if none)."""
    return _recv(sock, _NOBLOCK, False, False)


def recv_waiting(sock: zmq.Socket) -> zmq.Frame:
    """Wait (up to the socket's RCVTIMEO) for the first frame of a message, zero-copy
    (``zmq.Again`` when the time is up)."""
    return _recv(sock, 0, False, False)


def recv_frame_into(sock: zmq.Socket, buffer: Any) -> int:
    """Receive the next frame straight into ``buffer`` (contiguous, writable); returns the
    frame's size, which differs from ``buffer``'s when the frame did not fit exactly."""
    return int(sock.recv_into(buffer, flags=_NOBLOCK))


def more_frames(sock: zmq.Socket) -> bool:
    """True if the message being received has more frames."""
    return bool(_get(sock, _RCVMORE))


def discard_rest(sock: zmq.Socket) -> None:
    """Receive and drop what is left of the current message."""
    while more_frames(sock):
        _recv(sock, _NOBLOCK, True, False)


def recv_frames(sock: zmq.Socket) -> list[zmq.Frame]:
    """Receive one multipart message as zero-copy frames; ``zmq.Again`` if none is queued.
    (A received frame says whether more follow: no RCVMORE option call per frame.)"""
    frame = _recv(sock, _NOBLOCK, False, False)
    frames = [frame]
    while frame.more:
        frame = _recv(sock, _NOBLOCK, False, False)
        frames.append(frame)
    return frames


class LoopSocket:
    """A non-blocking ZeroMQ socket whose incoming messages go to ``on_message`` (which
    may return how many requests a message carried: a turn of the loop handles at most
    ``DRAIN_BATCH`` requests), or, with ``on_readable``, that calls it to read them itself
    (receiving frames into arrays of its own). ``on_readable`` must read every message
    queued.

    Sends never block: a socket at its high-water mark raises ``zmq.Again`` to the caller.
    ``close()`` stops watching the descriptor and closes the socket.
    """

    def __init__(self, sock: zmq.Socket, on_message: OnMessage | None = None,
                 loop: asyncio.AbstractEventLoop | None = None,
                 on_readable: Callable[[zmq.Socket], None] | None = None) -> None:
        self.socket = sock
        self._on_message = on_message
        self._on_readable = on_readable
        self._loop = loop or asyncio.get_running_loop()
        self._fd: int = sock.getsockopt(zmq.FD)  # type: ignore[assignment]
        self._scheduled = False
        self._closed = False
        self._draining = False
        self._loop.add_reader(self._fd, self._drain)
        self._schedule()  # messages may already be queued

    def send(self, frames: Sequence[Any]) -> None:
        """Queue a multipart message (buffers of 64 KiB or more are not copied)."""
        sock = self.socket
        try:
            send_frames(sock, frames)
        finally:
            # Sending may have consumed the descriptor's wake-up for a message that arrived
            # meanwhile: look now, and drain on the next turn only if something is waiting
            # (while draining, the drain's next receive looks anyway).
            if not self._draining and readable(sock):
                self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled and not self._closed:
            self._scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        sock = self.socket
        if self._on_readable is not None:
            if not self._closed:
                try:
                    self._on_readable(sock)
                except Exception:
                    log.exception("error reading from a socket")
            return
        assert self._on_message is not None
        # Receive until there is nothing (no option call first: a receive that finds a
        # message makes no system call, and one that finds none re-arms the descriptor).
        self._draining = True
        budget = DRAIN_BATCH
        try:
            while budget > 0:
                if self._closed:
                    return
                try:
                    frames = recv_frames(sock)
                except zmq.Again:
                    return
                try:
                    budget -= self._on_message(frames) or 1
                except Exception:  # a failing handler must not strand the messages behind it
                    log.exception("error handling a message; dropped it")
                    budget -= 1
        finally:
            self._draining = False
        self._schedule()  # more may be waiting: after the loop's other callbacks

    def close(self, linger: float = 0.0) -> None:
        """Stop watching the socket and close it, giving queued messages ``linger`` s."""
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)
        self.socket.close(linger=int(linger * 1000))
