"""The asyncio shell of a server: a ROUTER socket feeding ``ServerCore``.

Receive, decode (validated), dispatch to a handler, send the reply. Replies that must
wait for a sync round run as tasks the server owns and cancels on close. Large arrays go
out zero-copy; the table is pinned until ZeroMQ has finished reading its buffer.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import zmq

from zps.config import ServerConfig
from zps.errors import ProtocolError
from zps.protocol import DecodeError, Reply, decode_request, encode_reply
from zps.server.core import ServerCore
from zps.server.replication import Follower, Publisher
from zps.store.snapshot import (
    SnapshotError,
    latest_checkpoint,
    read_checkpoint,
    take_snapshot,
    write_checkpoint,
)
from zps.transport import ZERO_COPY_BYTES, LoopSocket

log = logging.getLogger("zps.server")

# On shutdown, how long error replies to waiting pulls may take to leave.
SHUTDOWN_FLUSH_SECONDS = 1.0


class Server:
    """One zps server process: ``async with Server(config) as server: await server.serve()``.

    ``address`` is the endpoint actually bound (useful with port 0 or ``*``).
    ``close()`` stops receiving, fails pulls still waiting for a round and closes the socket.
    """

    def __init__(self, config: ServerConfig, context: zmq.Context | None = None) -> None:
        self.config = config
        self.server_id = uuid.uuid4().hex[:12]
        self.core = ServerCore(config, self.server_id)
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._socket: LoopSocket | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._replies: set[asyncio.Task[Any]] = set()  # replies waiting for a round
        self._closed = asyncio.Event()
        self._publisher: Publisher | None = None
        self._follower: Follower | None = None
        self.failed = ""  # why the server stopped on its own (empty: it did not)
        self._checkpointed = -1  # change number of the newest checkpoint written
        self.address = ""

    async def __aenter__(self) -> Server:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start(self) -> None:
        """Bind the ROUTER socket and start serving in the background (after restoring the
        newest checkpoint of ``config.restore``: ``SnapshotError`` if it is unusable)."""
        if self.config.restore:
            self._restore(Path(self.config.restore))
        sock = self._context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, self.config.sndhwm)
        sock.setsockopt(zmq.RCVHWM, self.config.rcvhwm)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted client keeps its identity
        # ZeroMQ drops a peer that sends a larger frame before buffering it whole; the
        # protocol check in decode_request then answers messages over the limit in total.
        sock.setsockopt(zmq.MAXMSGSIZE, self.config.limits.max_message_bytes)
        bind = self.config.bind
        if bind.startswith("tcp://") and bind.endswith(":0"):
            bind = bind[:-2] + ":*"
        sock.bind(bind)
        self.address = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._socket = LoopSocket(sock, self._dispatch)
        self._own(self._reap_loop())
        if self.config.checkpoint_dir and (self.config.checkpoint_every > 0
                                           or self.config.checkpoint_rounds > 0):
            self._own(self._checkpoint_loop())
        if self.core.role == "primary":
            self._start_publishing()
            log.info(
                "zps-server %s listening on %s (mode %s, waiting for %d workers; "
                "changes published on %s)", self.server_id, self.address, self.config.mode,
                self.config.workers, self.core.pub_endpoint,
            )
        else:
            self._follower = Follower(self.core, self._context, self.config.standby_of,
                                      f"standby-{self.server_id}", self._promote)
            self.core.replication_info = self._follower_info
            task = self._own(self._follow())
            task.add_done_callback(self._follow_done)
            log.info("zps-server %s listening on %s as hot standby of %s (epoch %d)",
                     self.server_id, self.address, self.config.standby_of, self.core.epoch)

    def _restore(self, folder: Path) -> None:
        path = latest_checkpoint(folder)
        if path is None:
            raise SnapshotError(f"no checkpoint in {folder} to restore (files ckpt-*.zps); "
                                "check --restore, or start without it")
        snapshot = read_checkpoint(path)
        self.core.install_snapshot(snapshot)
        self._checkpointed = snapshot.seq
        log.info("restored %s: change %d, epoch %d, %d tables", path, snapshot.seq,
                 snapshot.epoch, len(snapshot.tables))

    def checkpoint(self) -> Path | None:
        """Write a checkpoint now (synchronously); None if nothing changed since the last."""
        if not self.config.checkpoint_dir or self.core.role != "primary" \
                or self.core.store.seq == self._checkpointed:
            return None
        snapshot = take_snapshot(self.core.store, self.core.epoch, self.core.extra_state())
        path = write_checkpoint(Path(self.config.checkpoint_dir), snapshot)
        self._checkpointed = snapshot.seq
        log.info("checkpoint %s written (change %d)", path, snapshot.seq)
        return path

    async def _checkpoint_loop(self) -> None:
        """Checkpoints every checkpoint_every seconds, or every checkpoint_rounds rounds:
        the snapshot is taken on the loop (consistent), the file written in a thread."""
        every, rounds = self.config.checkpoint_every, self.config.checkpoint_rounds
        last_round = 0
        while True:
            await asyncio.sleep(every if every > 0 else self.config.repl_interval)
            if every <= 0:
                closed = self.core.counters["rounds"]
                if not rounds or closed - last_round < rounds:
                    continue
                last_round = closed
            if self.core.role != "primary" or self.core.store.seq == self._checkpointed:
                continue
            snapshot = take_snapshot(self.core.store, self.core.epoch, self.core.extra_state())
            try:
                path = await asyncio.to_thread(
                    write_checkpoint, Path(self.config.checkpoint_dir), snapshot)
            except OSError as exc:
                log.error("checkpoint not written: %s (the previous one is kept)", exc)
                continue
            self._checkpointed = snapshot.seq
            log.info("checkpoint %s written (change %d)", path, snapshot.seq)

    def _start_publishing(self) -> None:
        bind = self.config.pub_bind or _free_port_on(self.address)
        self._publisher = Publisher(self._context, bind, self.core.epoch,
                                    self.config.inject_pub_drops,
                                    active=lambda: self.core.standby is not None)
        self.core.pub_endpoint = self._publisher.endpoint
        self.core.store.subscribe(self._publisher.publish)
        self.core.replication_info = lambda: {"published_to": self.core.pub_endpoint}
        self._own(self._beat_loop())

    async def _beat_loop(self) -> None:
        publisher = self._publisher
        assert publisher is not None
        while True:
            publisher.epoch = self.core.epoch
            publisher.beat(self.core.store.seq)
            await asyncio.sleep(self.config.repl_interval)

    async def _follow(self) -> None:
        assert self._follower is not None
        await self._follower.run()

    def _follow_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        log.error("standby stopped: %s", task.exception())
        self.failed = f"standby stopped: {task.exception()}"
        self._closed.set()

    def _follower_info(self) -> dict[str, Any]:
        f = self._follower
        if f is None:
            return {}
        return {"primary": self.config.standby_of, "primary_seq": f.primary_seq,
                "lag": max(0, f.primary_seq - self.core.store.seq), "resyncs": f.resyncs,
                "silent": round(time.monotonic() - f.last_beat, 3)}

    def _promote(self) -> None:
        """The primary went silent: take over with the next epoch and start publishing."""
        assert self._follower is not None
        if not self._follower.synced.is_set():
            raise ProtocolError("unreachable", "the primary went silent before this standby "
                                               "had a copy of its state; nothing to take over")
        silent = time.monotonic() - self._follower.last_beat
        self._follower = None
        self.core.promote()
        self._start_publishing()
        log.warning("promoted to primary (epoch %d) at change %d after %.2f s without "
                    "heartbeats from %s", self.core.epoch, self.core.store.seq, silent,
                    self.config.standby_of)

    async def serve(self) -> None:
        """Run until ``close()`` is called (or the surrounding task is cancelled)."""
        await self._closed.wait()

    async def close(self) -> None:
        """Stop serving: cancel owned tasks, fail waiting pulls, close the socket."""
        if self._closed.is_set():
            return
        self._closed.set()
        # Pulls waiting for a round get a "shutting down" error reply, not silence.
        self.core.cancel_waiters()
        if self._replies:
            await asyncio.wait(self._replies, timeout=SHUTDOWN_FLUSH_SECONDS)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            self.checkpoint()  # a clean shutdown leaves its final state on disk
        except OSError as exc:
            log.error("final checkpoint not written: %s", exc)
        if self._socket is not None:
            self._socket.close(linger=SHUTDOWN_FLUSH_SECONDS)
        if self._follower is not None:
            self._follower.close()
        if self._publisher is not None:
            self._publisher.close()
        if self._own_context:
            self._context.term()
        log.info("zps-server %s stopped", self.server_id)

    def _own(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _reap_loop(self) -> None:
        interval = min(self.config.heartbeat_interval, self.config.repl_interval * 2)
        while True:
            await asyncio.sleep(interval)
            self.core.reap(time.monotonic())

    def _dispatch(self, frames: list[zmq.Frame]) -> None:
        peer = frames[0].bytes
        request_id = None
        try:
            request = decode_request(frames[1:], self.config.limits)
            request_id = request.request_id
            result = self.core.handle(request)
        except DecodeError as exc:
            self._send_error(peer, exc.request_id, exc.code, str(exc))
            return
        except ProtocolError as exc:
            self._send_error(peer, request_id, exc.code, str(exc))
            return
        except Exception as exc:  # a bug must not kill the server: log it, answer, go on
            log.exception("internal error handling a request")
            self._send_error(peer, request_id, "internal", f"internal server error: {exc}")
            return
        if isinstance(result, Reply):
            self._send(peer, result)
        else:
            task = self._own(self._send_later(peer, request_id, result))
            self._replies.add(task)
            task.add_done_callback(self._replies.discard)

    async def _send_later(
        self, peer: bytes, request_id: int | None, pending: Coroutine[Any, Any, Reply]
    ) -> None:
        try:
            reply = await pending
        except ProtocolError as exc:
            self._send_error(peer, request_id, exc.code, str(exc))
            return
        self._send(peer, reply)

    def _send_error(self, peer: bytes, request_id: int | None, code: str, text: str) -> None:
        self.core.counters["errors"] += 1
        log.debug("rejected request %s: %s: %s", request_id, code, text)
        self._send(peer, Reply(request_id, info={"sid": self.server_id}, error=(code, text)))

    def _send(self, peer: bytes, reply: Reply) -> None:
        assert self._socket is not None
        frames: list[Any] = encode_reply(reply)
        for i, meta in enumerate(reply.tensors, start=1):
            if meta.nbytes >= ZERO_COPY_BYTES:
                frame = zmq.Frame(frames[i], track=True)
                table = self.core.store.get(meta.name) if meta.name in self.core.store else None
                if table is not None and table.data is reply.buffers[i - 1]:
                    table.pin(frame.tracker)  # a logged change (delta pull) needs no pin
                frames[i] = frame
        try:
            self._socket.send([peer, *frames])
        except zmq.ZMQError as exc:  # peer gone or its queue full: it will retry
            log.debug("reply to %r dropped: %s", peer, exc)


def _free_port_on(endpoint: str) -> str:
    """A bind address for the change stream: the same host as ``endpoint``, any port."""
    if endpoint.startswith("tcp://"):
        return endpoint.rsplit(":", 1)[0] + ":*"
    return endpoint + "-changes"  # ipc:// or inproc://
