"""One DEALER connection from a client to one server: request ids, futures, retries.

Each request gets a fresh id and a future; a receive task resolves futures as replies
arrive. A request that times out is sent again with the same id, so the server applies a
retried push only once. Replies from a different server instance (a restart) are refused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import zmq

from zps.client.session import check_reply, first_request_id, unreachable_message
from zps.errors import ClosedError, ProtocolError, ServerUnreachable, ZpsError
from zps.protocol import (
    EncodedMeta,
    Op,
    Reply,
    Request,
    TensorMeta,
    decode_reply,
    encode_request,
)
from zps.transport import LoopSocket, open_socket

log = logging.getLogger("zps.client")


class Connection:
    """Requests to one server over a DEALER socket. Created and used on one event loop."""

    def __init__(
        self, context: zmq.Context, address: str, client_id: str, ids: RequestIds
    ) -> None:
        self.address = address
        self.client_id = client_id
        self.server_id: str | None = None
        self._ids = ids
        self._pending: dict[int, asyncio.Future[Reply]] = {}
        self._socket = LoopSocket(open_socket(context, zmq.DEALER, address), self._on_reply)
        self._closed = False

    async def request(
        self,
        op: Op,
        *,
        tensors: Sequence[TensorMeta] = (),
        buffers: Sequence[Any] = (),
        names: Sequence[str] = (),
        options: dict[str, Any] | None = None,
        encoded: Sequence[EncodedMeta] = (),
        timeout: float,
        attempts: int,
        request_id: int | None = None,
    ) -> Reply:
        """Send a request and return its successful reply.

        Raises ``RemoteError`` (or a subclass) for an error reply, ``ServerUnreachable``
        when no reply came after ``attempts`` sends of ``timeout`` seconds each, and
        ``ConnectionLost`` when the answer comes from a restarted server. On cancel, the
        request is forgotten (a late reply is dropped).
        """
        if self._closed:
            raise ClosedError("the client is closed")
        rid = request_id if request_id is not None else self._ids.next()
        request = Request(op, self.client_id, rid, tuple(tensors), tuple(names),
                          options or {}, tuple(buffers), tuple(encoded))
        frames = encode_request(request)
        loop = asyncio.get_running_loop()
        try:
            for _ in range(attempts):
                future: asyncio.Future[Reply] = loop.create_future()
                self._pending[rid] = future
                await self._send(frames, timeout)
                timer = loop.call_later(timeout, _expire, future)
                try:
                    reply = await future
                except _AttemptExpired:
                    continue  # resend with the same id: the server applies it at most once
                finally:
                    timer.cancel()
                return check_reply(reply, op, self.server_id, self.address)
        finally:
            self._pending.pop(rid, None)
        raise ServerUnreachable(unreachable_message(self.address, op, attempts, timeout))

    async def _send(self, frames: list[Any], timeout: float) -> None:
        """Queue ``frames``; if the socket is at its high-water mark, wait for room."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                self._socket.send(frames)
                return
            except zmq.Again:
                if loop.time() > deadline:
                    return  # counted as a lost attempt; the caller retries or gives up
                await asyncio.sleep(0.001)

    def _on_reply(self, frames: list[zmq.Frame]) -> None:
        try:
            reply = decode_reply(frames)
        except ProtocolError as exc:
            log.warning("dropped a malformed reply from %s: %s", self.address, exc)
            return
        if reply.request_id is None:
            log.warning("error from %s about an unreadable request: %s", self.address,
                        reply.error)
            return
        future = self._pending.pop(reply.request_id, None)
        if future is not None and not future.done():
            future.set_result(reply)

    def fail_pending(self, exc: BaseException) -> None:
        """Fail every request waiting here with ``exc`` (the shard moved to its standby)."""
        for future in self._pending.values():
            if not future.done():
                future.set_exception(exc)

    async def close(self) -> None:
        """Stop receiving, fail requests in flight, close the socket."""
        if self._closed:
            return
        self._closed = True
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ClosedError("the client was closed"))
        self._pending.clear()
        self._socket.close()


class Switched(ZpsError):
    """The shard's standby took over while a request waited (the client resends there)."""


class _AttemptExpired(Exception):
    """One attempt of a request saw no reply in time (internal: triggers a resend)."""


def _expire(future: asyncio.Future[Reply]) -> None:
    if not future.done():
        future.set_exception(_AttemptExpired())


class RequestIds:
    """Request ids, increasing per client across all its connections."""

    def __init__(self) -> None:
        self._value = first_request_id()

    def next(self) -> int:
        self._value += 1
        return self._value
