"""Hot standby: a primary publishes every numbered change; a standby mirrors it.

The stream on the primary's PUB socket is two kinds of multipart messages:

- ``[b"c", header, *buffers]``: change number ``s`` of epoch ``e``: a table created (its
  initial value) or an update applied (what ``Store.apply`` was given, dense or compressed),
  with the pushes it carries for deduplication;
- ``[b"h", header]``: a heartbeat with the primary's sequence number and epoch.

A standby subscribes, waits for a heartbeat (so its subscription is live), fetches a
snapshot over the request channel (op ``snapshot``), then applies the changes after the
snapshot's sequence number in order. A missing number, or a heartbeat ahead of what it
holds, is a gap: it fetches a fresh snapshot. After ``repl_interval x repl_liveness``
without heartbeats it promotes itself to primary with the next epoch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import msgpack
import numpy as np
import zmq

from zps.codecs import Compressed, Encoded, check_parts, make_codec
from zps.errors import ProtocolError, ZpsError
from zps.protocol import DTYPES, Op, Reply, Request, TensorMeta
from zps.protocol.framing import decode_reply, encode_request
from zps.protocol.messages import PART_DTYPES
from zps.store import Change
from zps.store.snapshot import Snapshot, snapshot_frames, snapshot_from_frames
from zps.transport import LoopSocket, open_socket

log = logging.getLogger("zps.replication")

CHANGE = b"c"
BEAT = b"h"


# ---------------------------------------------------------------- the stream (sans-IO)


def change_frames(change: Change, epoch: int) -> list[Any]:
    """The PUB message for ``change`` (buffers zero-copy: they are never written again)."""
    header: dict[str, Any] = {
        "s": change.seq, "e": epoch, "t": change.table, "v": change.version,
        "k": change.kind, "g": change.given_scale,
        "q": [list(r) for r in change.requests],
    }
    if change.optimizer is not None:
        header["o"] = change.optimizer
    given = change.given
    if isinstance(given, Compressed):
        enc = given.encoded
        header["z"] = [enc.codec, enc.params, enc.dtype, list(enc.shape),
                       [[p.dtype.name, int(p.nbytes)] for p in enc.parts]]
        buffers = list(enc.parts)
    else:
        header["d"] = [given.dtype.name, list(given.shape)]
        buffers = [np.ascontiguousarray(given)]
    return [CHANGE, msgpack.packb(header), *buffers]


def beat_frames(seq: int, epoch: int) -> list[Any]:
    return [BEAT, msgpack.packb({"s": seq, "e": epoch})]


@dataclass(frozen=True, slots=True)
class Replicated:
    """A change as a standby receives it."""

    seq: int
    epoch: int
    table: str
    version: int
    kind: str
    update: np.ndarray | Compressed
    scale: float
    requests: tuple[tuple[str, int], ...]
    optimizer: dict[str, Any] | None


def parse_change(frames: Sequence[Any]) -> Replicated:
    """A ``Replicated`` from a change message; ``ProtocolError`` if it is malformed."""
    try:
        header = msgpack.unpackb(frames[1], raw=False)
        seq, epoch, table, version = header["s"], header["e"], header["t"], header["v"]
        kind, scale = header["k"], float(header["g"])
        requests = tuple((str(c), int(r)) for c, r in header["q"])
        if not (isinstance(seq, int) and isinstance(table, str) and kind in ("apply", "create")):
            raise ValueError("bad types")
        buffers = frames[2:]
        update: np.ndarray | Compressed
        if "z" in header:
            codec_name, params, dtype, shape, parts = header["z"]
            if dtype not in DTYPES or any(p[0] not in PART_DTYPES for p in parts):
                raise ValueError("bad dtype")
            arrays = tuple(np.frombuffer(b, dtype=p[0]) for p, b in zip(parts, buffers,
                                                                      strict=True))
            enc = Encoded(codec_name, tuple(shape), dtype, arrays, params)
            codec = make_codec(codec_name)
            check_parts(codec, enc)
            update = Compressed(codec, enc)
        else:
            dtype, shape = header["d"]
            if dtype not in DTYPES or len(buffers) != 1:
                raise ValueError("bad dense update")
            update = np.frombuffer(buffers[0], dtype=dtype).reshape(shape)
    except (KeyError, TypeError, ValueError, IndexError, msgpack.UnpackException) as exc:
        raise ProtocolError("bad_frames", f"malformed replication message: {exc}") from None
    return Replicated(seq, int(epoch), table, int(version), kind, update, scale, requests,
                      header.get("o"))


def parse_beat(frames: Sequence[Any]) -> tuple[int, int]:
    """(sequence number, epoch) of a heartbeat; ``ProtocolError`` if malformed."""
    try:
        header = msgpack.unpackb(frames[1], raw=False)
        return int(header["s"]), int(header["e"])
    except (KeyError, TypeError, ValueError, IndexError, msgpack.UnpackException) as exc:
        raise ProtocolError("bad_frames", f"malformed heartbeat: {exc}") from None


def snapshot_reply(request_id: int, snapshot: Snapshot, info: dict[str, Any]) -> Reply:
    """A reply carrying ``snapshot``: its header in the info, its arrays as frames."""
    frames = snapshot_frames(snapshot)
    arrays = [np.asarray(a) for a in frames[1:]]
    metas = tuple(TensorMeta(str(i), a.dtype.name, (a.size,), a.nbytes)
                  for i, a in enumerate(arrays))
    return Reply(request_id, tensors=metas, info={**info, "snapshot": bytes(frames[0])},
                 buffers=tuple(a.reshape(-1) for a in arrays))


def public_endpoint(endpoint: str, seen_as: str) -> str:
    """``endpoint`` with a wildcard host replaced by the host of ``seen_as``."""
    host = urlsplit(endpoint).hostname
    if host in ("0.0.0.0", "*", "::", None):
        port = endpoint.rsplit(":", 1)[1]
        return f"tcp://{urlsplit(seen_as).hostname}:{port}"
    return endpoint


# ---------------------------------------------------------------- primary side


class Publisher:
    """The primary's PUB socket: every change of the store, and heartbeats.

    At most ``hwm`` messages wait for a slow standby (changes are at most ``chunk_bytes``
    each, 4 MiB by default); past that PUB drops, and the standby resyncs by snapshot.
    """

    def __init__(self, context: zmq.Context, bind: str, epoch: int, drop_every: int = 0,
                 hwm: int = 256, active: Callable[[], bool] = lambda: True) -> None:
        self._socket = context.socket(zmq.PUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.SNDHWM, hwm)
        if bind.startswith("tcp://") and bind.endswith(":0"):
            bind = bind[:-2] + ":*"
        self._socket.bind(bind)
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.epoch = epoch
        self._active = active  # whether a standby is attached (else changes go nowhere)
        self._drop_every = drop_every
        self._count = 0

    def publish(self, change: Change) -> None:
        # A standby says hello before it subscribes, and its snapshot covers everything
        # before that: with none attached, nothing needs the stream.
        if not self._active():
            return
        self._count += 1
        if self._drop_every and self._count % self._drop_every == 0:
            return  # injected loss (tests): the standby must notice the gap
        # PUB never blocks: past the high-water mark it drops, and the standby, seeing
        # the gap, fetches a fresh snapshot.
        self._socket.send_multipart(change_frames(change, self.epoch), copy=False)

    def beat(self, seq: int) -> None:
        self._socket.send_multipart(beat_frames(seq, self.epoch))

    def close(self) -> None:
        self._socket.close(linger=0)


# ---------------------------------------------------------------- standby side


class Follower:
    """A standby's link to its primary: subscription, snapshot, acks, and the watchdog.

    ``core`` is the standby's ``ServerCore``; ``on_promote`` is called once, when the
    primary has been silent for too long.
    """

    def __init__(self, core: Any, context: zmq.Context, primary: str, client_id: str,
                 on_promote: Any) -> None:
        self.core = core
        self.primary = primary
        self.client_id = client_id
        self._context = context
        self._on_promote = on_promote
        cfg = core.config
        self._silence = cfg.repl_interval * cfg.repl_liveness
        self._sub: LoopSocket | None = None
        self._replies: asyncio.Queue[Reply] = asyncio.Queue()
        self._awaiting: int | None = None  # request id of the call waiting for its reply
        self.replaced = False
        self._rejoin = False
        self._stream: asyncio.Queue[list[zmq.Frame]] = asyncio.Queue()
        self._dealer_loop: LoopSocket | None = None
        self._rid = 1
        self.last_beat = time.monotonic()
        self.primary_seq = 0
        self.resyncs = 0
        self.synced = asyncio.Event()

    async def run(self) -> None:
        """Follow the primary until it goes silent, then promote (returns after that)."""
        self._dealer_loop = LoopSocket(open_socket(self._context, zmq.DEALER, self.primary),
                                       self._on_reply)
        try:
            info = await self._hello()
            sub = open_socket(self._context, zmq.SUB,
                              public_endpoint(str(info["pub"]), self.primary),
                              RCVHWM=256, SUBSCRIBE=b"")
            self._sub = LoopSocket(sub, self._on_stream)
            self.last_beat = time.monotonic()
            watchdog = asyncio.get_running_loop().create_task(self._watchdog())
            follow = asyncio.get_running_loop().create_task(self._follow())
            try:
                done, _ = await asyncio.wait({watchdog, follow},
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:  # also when the server closes and cancels this
                for task in (watchdog, follow):
                    task.cancel()
                await asyncio.gather(watchdog, follow, return_exceptions=True)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            self.close()
        self._on_promote()

    def _on_stream(self, frames: list[zmq.Frame]) -> None:
        # Any message from the primary shows it alive, even while a resync keeps the
        # queue unread (a long snapshot must not look like a dead primary).
        self.last_beat = time.monotonic()
        self._stream.put_nowait(frames)

    def _on_reply(self, frames: list[zmq.Frame]) -> None:
        """Replies on the request channel: the one a call awaits is queued; the answers to
        acknowledgements are dropped, unless the primary no longer knows this standby."""
        try:
            reply = decode_reply(frames)
        except ProtocolError:
            return
        if reply.request_id == self._awaiting:
            self._replies.put_nowait(reply)
        elif reply.error is not None and reply.error[0] == "replaced":
            self.replaced = True  # another standby took this one's place
        elif reply.error is not None and reply.error[0] == "not_registered":
            self._rejoin = True  # the primary declared this standby dead: attach again

    def close(self) -> None:
        for sock in (self._dealer_loop, self._sub):
            if sock is not None:
                sock.close()
        self._dealer_loop = self._sub = None

    async def _hello(self) -> dict[str, Any]:
        """Register with the primary as its standby; retried until it answers (or the
        watchdog-free start gives up after the primary's liveness window x 20)."""
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
            return reply.info

    async def _call(self, op: Op, options: dict[str, Any], timeout: float) -> Reply:
        assert self._dealer_loop is not None
        self._rid += 1
        rid = self._awaiting = self._rid
        self._dealer_loop.send(encode_request(Request(op, self.client_id, rid,
                                                      options=options)))
        try:
            reply = await asyncio.wait_for(self._replies.get(), timeout)
        finally:
            self._awaiting = None
        if reply.error is not None:
            raise ProtocolError(*reply.error)
        return reply

    def _ack(self) -> None:
        if self._dealer_loop is not None:
            self._rid += 1
            self._dealer_loop.send(encode_request(Request(
                Op.ACK, self.client_id, self._rid, options={"seq": self.core.store.seq})))

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
            frames = await self._stream.get()
            self._take(frames)
            while not self._stream.empty():  # drain, then acknowledge once
                self._take(self._stream.get_nowait())
            if self._rejoin:  # declared dead by the primary: say hello, copy afresh
                self._rejoin = False
                log.warning("the primary had dropped this standby; attaching again")
                await self._hello()
                self._needs_resync = True
            # A heartbeat comes after the changes it counts: holding fewer is a gap.
            if self._needs_resync or self.core.store.seq < self.primary_seq:
                if not self._needs_resync:
                    log.warning("replication gap: holding change %d, the primary is at %d; "
                                "fetching a fresh snapshot", self.core.store.seq,
                                self.primary_seq)
                await self._resync()
            self._ack()

    async def _first_beat(self) -> None:
        """Wait for a heartbeat: from then on the subscription sees every change."""
        while True:
            frames = await self._stream.get()
            if frames[0].bytes == BEAT:
                self.primary_seq, _ = parse_beat(frames)
                self.last_beat = time.monotonic()
                return

    def _take(self, frames: list[zmq.Frame]) -> None:
        """Handle one stream message; a gap or a bad change marks a resync."""
        topic = frames[0].bytes
        if topic == BEAT:
            seq, _ = parse_beat(frames)
            self.last_beat = time.monotonic()
            self.primary_seq = max(self.primary_seq, seq)
            return
        if topic != CHANGE or self._needs_resync:
            return
        try:
            change = parse_change(frames)
        except ProtocolError as exc:
            log.warning("%s; fetching a fresh snapshot", exc)
            self._needs_resync = True
            return
        self.last_beat = time.monotonic()  # a change is as good as a heartbeat
        self.primary_seq = max(self.primary_seq, change.seq)
        store = self.core.store
        if change.seq <= store.seq:
            return  # already in the snapshot
        if change.seq != store.seq + 1:
            log.warning("replication gap: holding change %d, received %d; fetching a fresh "
                        "snapshot", store.seq, change.seq)
            self._needs_resync = True
            return
        try:
            self.core.apply_replicated(change)
        except ZpsError as exc:
            log.warning("%s; fetching a fresh snapshot", exc)
            self._needs_resync = True

    _needs_resync = False

    async def _resync(self) -> None:
        """Fetch a snapshot and install it, then apply what the stream buffered."""
        while True:
            self._needs_resync = False
            try:
                reply = await self._call(Op.SNAPSHOT, {}, timeout=max(5.0, self._silence * 4))
            except TimeoutError:
                continue  # the watchdog decides whether the primary is gone
            except ProtocolError as exc:
                if exc.code != "not_registered":
                    raise
                await self._hello()
                continue
            try:
                snapshot = snapshot_from_frames([reply.info.get("snapshot"), *reply.buffers])
                self.core.install_snapshot(snapshot)
            except ZpsError as exc:
                log.error("unusable snapshot from %s: %s; asking again", self.primary, exc)
                continue
            self.resyncs += 1
            log.info("standby holds a snapshot at change %d (epoch %d, %d tables)",
                     snapshot.seq, snapshot.epoch, len(snapshot.tables))
            while not self._stream.empty():
                self._take(self._stream.get_nowait())
            if not self._needs_resync:
                self.synced.set()
                self._ack()
                return
