"""A standby's link to its primary: subscription, snapshot in chunks, acks, watchdog.

The standby says hello as the primary's standby, subscribes to its change stream, waits for
a heartbeat (from then on the subscription sees every change), reads a snapshot a bounded
chunk at a time, installs it, and applies the changes after it in order. A missing change
number, a heartbeat announcing changes it never got, a change that does not fit, or a
stream queue that overflowed while a snapshot was read, is a gap: it reads a fresh
snapshot. Every ``repl_interval`` it acknowledges what it holds; after
``repl_interval x repl_liveness`` without a word from the primary, ``run`` returns and the
server promotes itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

import numpy as np
import zmq

from zps.endpoints import public_endpoint
from zps.errors import ProtocolError, ZpsError
from zps.protocol import (
    Beat,
    Op,
    Reply,
    Request,
    decode_reply,
    decode_stream,
    encode_request,
)
from zps.server.core import ServerCore
from zps.server.replica import CHUNK_ALLOWANCE
from zps.store import SnapshotError
from zps.store.snapshot import assemble, parse_header
from zps.transport import LoopSocket, open_socket

log = logging.getLogger("zps.replication")

STREAM_QUEUE = 4096  # stream messages kept while a snapshot is read
STREAM_QUEUE_BYTES = 1 << 30
CHUNK_BYTES = 4 << 20  # what one snapshot chunk request asks for
CHUNKS_IN_FLIGHT = 4


class Follower:
    """A standby's link to ``primary``; ``run()`` returns once the primary went silent."""

    def __init__(self, core: ServerCore, context: zmq.Context, primary: str,
                 client_id: str, curve: dict[str, int | bytes] | None = None) -> None:
        self.core = core
        self._curve = curve or {}  # CURVE client options (this standby's key)
        self.primary = primary
        self.client_id = client_id
        self._context = context
        cfg = core.config
        self._limits = cfg.limits
        self._silence = cfg.repl_interval * cfg.repl_liveness
        self._dealer: LoopSocket | None = None
        self._sub: LoopSocket | None = None
        self._pending: dict[int, asyncio.Future[Reply]] = {}
        self._rid = 1
        self._stream: deque[list[zmq.Frame]] = deque()
        self._stream_bytes = 0
        self._overflowed = False
        self._arrived = asyncio.Event()
        self._needs_resync = False
        self._rejoin = False
        self._chunk_bytes = CHUNK_BYTES
        self.replaced = False
        self.last_beat = time.monotonic()
        self.primary_seq = 0
        self.resyncs = 0
        self.synced = asyncio.Event()

    async def run(self) -> None:
        """Follow the primary until it goes silent (returns), or fail (raises)."""
        self._dealer = LoopSocket(open_socket(self._context, zmq.DEALER, self.primary,
                                              **self._curve), self._on_reply)
        try:
            info = await self._hello()
            sub = open_socket(self._context, zmq.SUB,
                              public_endpoint(str(info["pub"]), self.primary),
                              RCVHWM=256, SUBSCRIBE=b"", **self._curve)
            self._sub = LoopSocket(sub, self._on_stream)
            self.last_beat = time.monotonic()
            loop = asyncio.get_running_loop()
            tasks = {loop.create_task(self._watchdog()), loop.create_task(self._follow())}
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:  # also when the server closes and cancels this
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            self.close()

    def close(self) -> None:
        for pending in self._pending.values():
            if not pending.done():
                pending.cancel()
        for sock in (self._dealer, self._sub):
            if sock is not None:
                sock.close()
        self._dealer = self._sub = None

    # ------------------------------------------------------------ sockets

    def _on_stream(self, frames: list[zmq.Frame]) -> None:
        # Any message shows the primary alive, even while a snapshot keeps the queue
        # unread (a long transfer must not look like a dead primary).
        self.last_beat = time.monotonic()
        size = sum(len(f) for f in frames)
        if len(self._stream) >= STREAM_QUEUE or self._stream_bytes + size > STREAM_QUEUE_BYTES:
            self._overflowed = True  # dropped: the gap is repaired by a fresh snapshot
            return
        self._stream.append(frames)
        self._stream_bytes += size
        self._arrived.set()

    def _on_reply(self, frames: list[zmq.Frame]) -> None:
        """The reply a call awaits resolves it; answers to acknowledgements are dropped
        unless the primary no longer knows this standby."""
        try:
            reply = decode_reply(frames, self._limits)
        except ProtocolError as exc:
            log.warning("dropped a malformed reply from the primary %s: %s", self.primary, exc)
            return
        pending = self._pending.pop(reply.request_id or 0, None)
        if pending is not None:
            if not pending.done():
                pending.set_result(reply)
        elif reply.error is not None and reply.error[0] == "replaced":
            self.replaced = True  # another standby took this one's place
        elif reply.error is not None and reply.error[0] == "not_registered":
            self._rejoin = True  # the primary declared this standby dead: attach again

    def _send(self, op: Op, options: dict[str, Any]) -> int:
        assert self._dealer is not None
        self._rid += 1
        self._dealer.send(encode_request(Request(op, self.client_id, self._rid,
                                                 options=options)))
        return self._rid

    def _start(self, op: Op, options: dict[str, Any]) -> tuple[int, asyncio.Future[Reply]]:
        rid = self._send(op, options)
        future = self._pending[rid] = asyncio.get_running_loop().create_future()
        return rid, future

    async def _finish(self, rid: int, future: asyncio.Future[Reply], timeout: float) -> Reply:
        try:
            reply = await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(rid, None)
        if reply.error is not None:
            raise ProtocolError(*reply.error)
        return reply

    async def _call(self, op: Op, options: dict[str, Any], timeout: float) -> Reply:
        return await self._finish(*self._start(op, options), timeout)

    def _ack(self, installed: int | None = None) -> None:
        if self._dealer is not None:
            options: dict[str, Any] = {"seq": self.core.received_seq}
            if installed is not None:
                options["snapshot"] = installed  # the primary may let its buffers go
            self._send(Op.ACK, options)

    async def _hello(self) -> dict[str, Any]:
        """Register with the primary as its standby; retried until it answers (or give
        up after the primary's liveness window x 20, at least 10 s)."""
        deadline = time.monotonic() + max(10.0, self._silence * 20)
        while True:
            try:
                reply = await self._call(Op.HELLO, {"role": "standby"}, timeout=1.0)
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise ProtocolError("unreachable", f"primary {self.primary} does not "
                                                       "answer; is it running?") from None
                continue
            if reply.info.get("role") != "primary":
                raise ProtocolError("not_primary", f"{self.primary} is not a primary "
                                                   f"(it is a {reply.info.get('role')}); "
                                                   "point --standby-of at the primary")
            theirs, ours = len(reply.info.get("group") or [0]), len(self.core.config.group) or 1
            if theirs != ours:  # a standby (group) follows a primary (group) process by process
                raise ProtocolError("conflict", f"{self.primary} is one of a group of {theirs} "
                                                f"processes and this standby of {ours}: start "
                                                f"the standby with --procs {theirs}")
            limit = reply.info.get("max_message_bytes")
            if isinstance(limit, int):  # chunks the primary accepts to send
                self._chunk_bytes = max(1 << 16, min(CHUNK_BYTES, limit - CHUNK_ALLOWANCE))
            return reply.info

    # ------------------------------------------------------------ following

    async def _watchdog(self) -> None:
        """Return when the primary has been silent for interval x liveness; meanwhile
        tell it, every interval, what this standby holds (its heartbeat, too)."""
        interval = self.core.config.repl_interval
        while True:
            await asyncio.sleep(interval)
            if self.replaced:
                raise ProtocolError("replaced", f"another standby of {self.primary} took "
                                                "this one's place; stopping")
            silent = time.monotonic() - self.last_beat
            if silent > self._silence:
                log.warning("primary %s silent for %.2f s", self.primary, silent)
                return
            self._ack()

    async def _follow(self) -> None:
        await self._first_beat()
        await self._resync()
        while True:
            await self._arrived.wait()
            self._drain()
            if self._rejoin:  # declared dead by the primary: say hello, copy afresh
                self._rejoin = False
                log.warning("the primary had dropped this standby; attaching again")
                await self._hello()
                self._needs_resync = True
            # A heartbeat comes after the changes it counts: holding fewer is a gap.
            if self._needs_resync or self.core.received_seq < self.primary_seq:
                if not self._needs_resync:
                    log.warning("replication gap: holding change %d, the primary is at %d; "
                                "reading a fresh snapshot", self.core.received_seq,
                                self.primary_seq)
                await self._resync()
            self._ack()

    async def _first_beat(self) -> None:
        """Wait for a heartbeat: from then on the subscription sees every change."""
        while True:
            await self._arrived.wait()
            while self._stream:
                message = self._pop()
                if message[0].bytes == b"h":
                    self._take(message)
                    return

    def _pop(self) -> list[zmq.Frame]:
        frames = self._stream.popleft()
        self._stream_bytes -= sum(len(f) for f in frames)
        if not self._stream:
            self._arrived.clear()
        return frames

    def _drain(self) -> None:
        while self._stream:
            self._take(self._pop())

    def _take(self, frames: list[zmq.Frame]) -> None:
        """Handle one stream message; a gap or a bad change marks a resync."""
        try:
            message = decode_stream(frames, self._limits)
        except ProtocolError as exc:
            log.warning("malformed replication message (%s); reading a fresh snapshot", exc)
            self._needs_resync = True
            return
        self.primary_seq = max(self.primary_seq, message.seq)
        if isinstance(message, Beat) or self._needs_resync:
            return
        held = self.core.received_seq
        if message.seq <= held:
            return  # already in the snapshot
        if message.seq != held + 1:
            log.warning("replication gap: holding change %d, received %d; reading a fresh "
                        "snapshot", held, message.seq)
            self._needs_resync = True
            return
        try:
            self.core.apply_replicated(message)
        except ZpsError as exc:
            log.warning("%s; reading a fresh snapshot", exc)
            self._needs_resync = True

    async def _resync(self) -> None:
        """Read a snapshot and install it, then apply what the stream queued meanwhile."""
        while True:
            self._needs_resync = self._overflowed = False
            try:
                await self._install_snapshot()
            except TimeoutError:
                continue  # the watchdog decides whether the primary is gone
            except ProtocolError as exc:
                if exc.code == "not_registered":
                    await self._hello()
                    continue
                if exc.code != "bad_header":
                    raise
                log.warning("snapshot refused by the primary (%s); asking again", exc)
                continue
            except SnapshotError as exc:
                log.error("unusable snapshot from %s: %s; asking again", self.primary, exc)
                await asyncio.sleep(self.core.config.repl_interval * 10)  # not in a hot loop
                continue
            self._drain()
            if self._overflowed:
                log.warning("the change stream overflowed while the snapshot was read; "
                            "reading another")
                continue
            if not self._needs_resync:
                self.synced.set()
                self._ack()
                return

    async def _install_snapshot(self) -> None:
        timeout = max(5.0, self._silence * 4)
        reply = await self._call(Op.SNAPSHOT, {}, timeout)
        manifest = reply.info.get("snapshot")
        arrays = _allocate(manifest)
        ident = int(manifest["id"])  # type: ignore[index]  # _allocate checked it
        await self._read_chunks(ident, arrays, timeout)
        layout = parse_header(arrays[0].tobytes())
        shapes = [m.shape for m in layout.arrays()]
        if [int(np.prod(s)) for s in shapes] != [a.size for a in arrays[1:]]:
            raise SnapshotError("the snapshot's arrays do not match its header")
        snapshot = assemble(layout, [a.reshape(s) for a, s in zip(arrays[1:], shapes,
                                                                   strict=True)],
                            writable=True)
        self.core.install_snapshot(snapshot, adopt=True)
        self._ack(installed=ident)
        self.resyncs += 1
        log.info("standby holds a snapshot at change %d (epoch %d, %d tables)",
                 snapshot.seq, snapshot.epoch, len(snapshot.tables))

    async def _read_chunks(self, ident: int, arrays: list[np.ndarray], timeout: float) -> None:
        """Fill ``arrays`` with chunk replies, a few requests in flight at a time."""
        pieces = ((i, start, min(start + step, a.size))
                  for i, a in enumerate(arrays)
                  for step in [max(1, self._chunk_bytes // a.itemsize)]
                  for start in range(0, a.size, step))
        window: deque[tuple[int, asyncio.Future[Reply], np.ndarray]] = deque()
        try:
            for index, start, stop in pieces:
                rid, future = self._start(Op.SNAPSHOT_CHUNK, {"id": ident, "a": index,
                                                              "start": start, "stop": stop})
                window.append((rid, future, arrays[index][start:stop]))
                if len(window) >= CHUNKS_IN_FLIGHT:
                    await self._fill(*window.popleft(), timeout)
            while window:
                await self._fill(*window.popleft(), timeout)
        finally:
            for rid, future, _ in window:
                self._pending.pop(rid, None)
                future.cancel()

    async def _fill(self, rid: int, future: asyncio.Future[Reply], dest: np.ndarray,
                    timeout: float) -> None:
        got = await self._finish(rid, future, timeout)
        if len(got.buffers) != 1 or got.tensors[0].dtype != dest.dtype.name \
                or got.tensors[0].shape != dest.shape:
            raise SnapshotError("a snapshot chunk came back malformed")
        dest[...] = np.frombuffer(got.buffers[0], dest.dtype)


def _allocate(manifest: Any) -> list[np.ndarray]:
    """Empty arrays for a snapshot manifest (the header's bytes, then each array)."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("id"), int) or \
            not isinstance(manifest.get("arrays"), list) or not manifest["arrays"]:
        raise SnapshotError("malformed snapshot manifest")
    arrays = []
    for entry in manifest["arrays"]:
        if not (isinstance(entry, list) and len(entry) == 2 and entry[0] in _DTYPES
                and isinstance(entry[1], int) and 0 <= entry[1] < 1 << 46):
            raise SnapshotError(f"malformed snapshot manifest entry {entry!r:.60}")
        arrays.append(np.empty(entry[1], entry[0]))
    if arrays[0].dtype != np.uint8:
        raise SnapshotError("a snapshot manifest starts with its header's bytes")
    return arrays


_DTYPES = ("uint8", "float32", "float64", "int64", "int32", "uint32")
