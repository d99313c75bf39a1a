"""The asyncio shell of a server: a ROUTER socket feeding ``ServerCore``.

Receive, decode (validated), hand the request to the core, send the replies it returns.
Large table buffers go out zero-copy; the core names them (leases) and the shell pins each
with the send's tracker. Every task the server starts is owned and cancelled on close.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import zmq

from zps.config import ServerConfig
from zps.curve import (
    KeyPair,
    client_options,
    fingerprint,
    load_pair,
    load_public,
    make_curve_server,
)
from zps.errors import ConfigError, ProtocolError
from zps.exposition import MetricsEndpoint
from zps.protocol import DecodeError, Op, decode_request, encode_reply
from zps.protocol.batch import HeldReplies, is_batch, split_batch
from zps.protocol.templates import TemplateCache
from zps.server.checkpoints import Checkpoints, check_writable
from zps.server.core import ServerCore
from zps.server.follower import Follower
from zps.server.metrics import server_endpoint
from zps.server.publisher import Publisher
from zps.server.replies import Outgoing
from zps.server.zap import CLIENTS_DOMAIN, ZapHandler
from zps.store import Change, SnapshotError, latest_checkpoint, read_checkpoint
from zps.transport import ZERO_COPY_BYTES, LoopSocket, bind

log = logging.getLogger("zps.server")

SHUTDOWN_FLUSH_SECONDS = 1.0  # how long error replies to waiting requests may take to leave
MAX_TIMED = 1 << 16  # requests timed at once (for the latency histograms)
# The ops timed: those that read or change tables (not watches, which wait for a takeover).
TIMED_OPS = frozenset({Op.INIT, Op.PUSH, Op.PULL, Op.PUSH_PULL, Op.INIT_ROWS, Op.PULL_ROWS,
                       Op.PUSH_ROWS, Op.PUSH_PULL_ROWS})


class Server:
    """One zps server process: ``async with Server(config) as server: await server.serve()``.

    ``address`` is the endpoint actually bound (useful with port 0 or ``*``). ``stop()``
    (safe from a signal handler) makes ``serve()`` return; ``close()`` fails the requests
    still waiting, writes the final checkpoint and closes everything; calling it again
    waits for the same shutdown.
    """

    def __init__(self, config: ServerConfig, context: zmq.Context | None = None) -> None:
        self.config = config
        self.server_id = uuid.uuid4().hex[:12]
        self.core = ServerCore(config, self.server_id)
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._socket: LoopSocket | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopped = asyncio.Event()
        self._closing: asyncio.Task[None] | None = None
        self._publisher: Publisher | None = None
        self._follower: Follower | None = None
        self.metrics: MetricsEndpoint | None = None  # with --metrics-bind
        self._checkpoints: Checkpoints | None = None
        self._curve: KeyPair | None = None
        self._zap: ZapHandler | None = None
        self._started: dict[tuple[bytes, int | None], tuple[str, float]] = {}  # latency
        self._templates = TemplateCache()  # request headers validated before
        self._held: HeldReplies | None = None  # while answering a batch
        self.failed = ""  # why the server stopped on its own (empty: it did not)
        self.address = ""

    async def __aenter__(self) -> Server:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start(self) -> None:
        """Check the checkpoint folder, restore (``SnapshotError`` if unusable), bind the
        ROUTER socket (``ConfigError`` naming the address) and serve in the background."""
        cfg = self.config
        if cfg.checkpoint_dir:
            try:
                check_writable(Path(cfg.checkpoint_dir))
            except OSError as exc:
                raise ConfigError(f"cannot write checkpoints to {cfg.checkpoint_dir}: "
                                  f"{exc.strerror or exc}") from None
            self._checkpoints = Checkpoints(self.core, Path(cfg.checkpoint_dir))
            self.core.checkpoint_info = self._checkpoints.info
        if cfg.restore:
            self._restore(Path(cfg.restore))
        self._start_curve()
        sock = self._context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, cfg.sndhwm)
        sock.setsockopt(zmq.RCVHWM, cfg.rcvhwm)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted client keeps its identity
        # ZeroMQ drops a peer that sends a larger frame before buffering it whole; the
        # protocol check in decode_request then answers messages over the limit in total.
        sock.setsockopt(zmq.MAXMSGSIZE, cfg.limits.max_message_bytes)
        try:
            if self._curve is not None:
                make_curve_server(sock, self._curve, CLIENTS_DOMAIN)
            self.address = bind(sock, cfg.bind, "the server (--bind)")
        except BaseException:
            sock.close(linger=0)
            raise
        self._socket = LoopSocket(sock, self._on_message)
        if cfg.metrics_bind:
            try:
                self.metrics = server_endpoint(cfg.metrics_bind, asyncio.get_running_loop(),
                                               lambda: self.stats_now())
            except OSError as exc:
                raise ConfigError(f"cannot serve metrics on {cfg.metrics_bind} "
                                  f"(--metrics-bind): {exc.strerror or exc}") from None
            log.info("metrics on http://%s/metrics", self.metrics.address)
        self._own(self._tick_loop())
        if self._checkpoints is not None and (cfg.checkpoint_every > 0
                                              or cfg.checkpoint_rounds > 0):
            self._own(self._checkpoints.run(cfg.checkpoint_every, cfg.checkpoint_rounds,
                                            cfg.repl_interval))
        if self.core.role == "primary":
            self._start_publishing()
            log.info("zps-server %s listening on %s (mode %s, waiting for %d workers; "
                     "changes published on %s)", self.server_id, self.address, cfg.mode,
                     cfg.workers, self.core.replica.pub_endpoint)
        else:
            self._follower = Follower(self.core, self._context, cfg.standby_of,
                                      f"standby-{self.server_id}", self._client_curve())
            self.core.replication_info = self._follower_info
            self._own(self._follow())
            log.info("zps-server %s listening on %s as hot standby of %s (epoch %d)",
                     self.server_id, self.address, cfg.standby_of, self.core.epoch)

    def _start_curve(self) -> None:
        """With ``curve_key``: load the key pair and start authenticating (before any
        socket binds: a CURVE socket bound without a ZAP handler would admit any key)."""
        cfg = self.config
        if not cfg.curve_key and not cfg.curve_authorized:
            return
        # By default the authorized keys are where `zps keygen` put them: beside the pair.
        authorized = Path(cfg.curve_authorized) if cfg.curve_authorized else \
            Path(cfg.curve_key).parent / "authorized"
        if not cfg.curve_key or not (cfg.curve_authorized or authorized.is_dir()):
            raise ConfigError("CURVE needs --curve-key FILE (this server's key pair) and the "
                              "public keys allowed in, by role: --curve-authorized DIR, or "
                              "an authorized/ folder beside the key, as `zps keygen` writes")
        self._curve = load_pair(cfg.curve_key, "--curve-key")
        self._zap = ZapHandler(self._context, authorized, self.core.counters)
        log.info("CURVE on: key %s, %d authorized keys in %s", fingerprint(self._curve.public),
                 len(self._zap.keys), authorized)

    def _client_curve(self) -> dict[str, int | bytes]:
        """Socket options of this standby's own connections to its primary."""
        if self._curve is None:
            return {}
        server_key = load_public(self.config.curve_server_key, "--curve-server-key") \
            if self.config.curve_server_key else self._curve.public
        return client_options(server_key, self._curve)

    def _restore(self, folder: Path) -> None:
        path = latest_checkpoint(folder)
        if path is None:
            raise SnapshotError(f"no checkpoint in {folder} to restore (files ckpt-*.zps); "
                                "check --restore, or start without it")
        snapshot = read_checkpoint(path)
        try:
            self.core.install_snapshot(snapshot, adopt=True)
        except ProtocolError as exc:
            raise SnapshotError(f"checkpoint {path}: {exc}") from None
        if self._checkpoints is not None:
            self._checkpoints.written = snapshot.seq
        log.info("restored %s: change %d, epoch %d, %d tables", path, snapshot.seq,
                 snapshot.epoch, len(snapshot.tables))

    async def checkpoint(self) -> Path | None:
        """Write a checkpoint now; None if nothing changed since the last one."""
        return await self._checkpoints.write() if self._checkpoints is not None else None

    # ------------------------------------------------------------ replication

    def _start_publishing(self) -> None:
        bind_to = self.config.pub_bind or _free_port_on(self.address)
        core = self.core
        self._publisher = Publisher(self._context, bind_to, core.epoch,
                                    active=lambda: core.replica.standby is not None,
                                    meta_of=self._change_meta,
                                    drop_every=self.config.inject_pub_drops,
                                    curve=self._curve)
        core.replica.pub_endpoint = self._publisher.endpoint
        core.store.subscribe(self._publisher.publish)
        core.replication_info = lambda: {"published_to": core.replica.pub_endpoint}
        self._own(self._beat_loop())

    def _change_meta(self, change: Change) -> dict[str, Any]:
        state = self.core.state
        if change.kind == "create_rows":
            meta: dict[str, Any] = dict(change.meta or {})
        elif change.kind == "create":
            meta = {"optimizer": change.optimizer}
        else:
            return {}
        if state.layout is not None:
            meta["layout"] = [*state.layout, state.shard]
        return meta

    async def _beat_loop(self) -> None:
        publisher = self._publisher
        assert publisher is not None
        while True:
            publisher.epoch = self.core.epoch
            publisher.beat(self.core.store.seq)
            await asyncio.sleep(self.config.repl_interval)

    async def _follow(self) -> None:
        assert self._follower is not None
        try:
            await self._follower.run()
        except ProtocolError as exc:
            log.error("standby stopped: %s", exc)
            self.failed = f"standby stopped: {exc}"
            self._stopped.set()
            return
        self._promote()

    def _follower_info(self) -> dict[str, Any]:
        f = self._follower
        if f is None:
            return {}
        return {"primary": self.config.standby_of, "primary_seq": f.primary_seq,
                "lag": max(0, f.primary_seq - self.core.received_seq), "resyncs": f.resyncs,
                "silent": round(time.monotonic() - f.last_beat, 3)}

    def _promote(self) -> None:
        """The primary went silent: take over with the next epoch and start publishing."""
        follower = self._follower
        assert follower is not None
        if not follower.synced.is_set():
            self.failed = ("the primary went silent before this standby had a copy of its "
                           "state; nothing to take over")
            log.error("standby stopped: %s", self.failed)
            self._stopped.set()
            return
        silent = time.monotonic() - follower.last_beat
        self._follower = None
        self._send_all(self.core.promote(time.monotonic()))
        self._start_publishing()
        log.warning("promoted to primary (epoch %d) at change %d after %.2f s without "
                    "heartbeats from %s", self.core.epoch, self.core.store.seq, silent,
                    self.config.standby_of)

    def stats_now(self) -> dict[str, Any]:
        """What ``stats`` answers now (on the event loop's thread)."""
        return self.core.stats(time.monotonic())

    # ------------------------------------------------------------ lifecycle

    async def serve(self) -> None:
        """Run until ``stop()`` or ``close()`` (or the standby fails)."""
        await self._stopped.wait()

    def stop(self) -> None:
        """Make ``serve()`` return (then call ``close()``); safe from a signal handler."""
        self._stopped.set()

    async def close(self) -> None:
        """Stop serving: fail waiting requests, cancel owned tasks, write the final
        checkpoint, close the sockets. Idempotent: a second call awaits the first."""
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._shutdown())
        await asyncio.shield(self._closing)

    async def _shutdown(self) -> None:
        self._stopped.set()
        self._send_all(self.core.shutdown())  # waiting requests get an error, not silence
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._checkpoints is not None:
            try:
                await self._checkpoints.write()  # a clean shutdown leaves its state on disk
            except OSError as exc:
                log.error("final checkpoint not written: %s", exc)
            self._checkpoints.close()
        if self.metrics is not None:
            self.metrics.close()
        if self._socket is not None:
            self._socket.close(linger=SHUTDOWN_FLUSH_SECONDS)
        if self._follower is not None:
            self._follower.close()
        if self._publisher is not None:
            self._publisher.close()
        if self._zap is not None:
            self._zap.close()
        if self._own_context:
            self._context.term()
        if self.address:  # it did start
            log.info("zps-server %s stopped", self.server_id)

    def _own(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _tick_loop(self) -> None:
        interval = min(self.config.heartbeat_interval, self.config.repl_interval * 2)
        while True:
            await asyncio.sleep(interval)
            self._send_all(self.core.tick(time.monotonic()))

    # ------------------------------------------------------------ messages

    def _on_message(self, frames: list[zmq.Frame]) -> int:
        """Handle one message; how many requests it carried."""
        peer = frames[0].bytes
        # With CURVE, ZAP named the connection's key and role; every frame carries it.
        user = _user_id(frames[1]) if self._zap is not None else None
        if len(frames) > 2 and is_batch(frames[1]):  # several requests: each on its own
            try:
                parts = split_batch(frames[1:], self.config.limits)
            except DecodeError as exc:
                self._send_all([self.core.error(peer, None, exc.code, str(exc))])
                return 1
            self.core.state.counters["batches"] += 1
            self._held = held = HeldReplies(peer)  # the small replies, sent as one
            try:
                for part in parts:
                    try:
                        self._on_request(peer, part, user)
                    except Exception:  # (as the socket's loop does for a lone message)
                        log.exception("error handling a request of a batch; dropped it")
            finally:
                self._held = None
                if held.messages:
                    self._emit(peer, held.frames())
            return len(parts)
        self._on_request(peer, frames[1:], user)
        return 1

    def _on_request(self, peer: bytes, frames: Sequence[Any], user: str | None) -> None:
        try:
            request = decode_request(frames, self.config.limits, self._templates)
        except DecodeError as exc:
            self._send_all([self.core.error(peer, exc.request_id, exc.code, str(exc))])
            return
        now = time.monotonic()
        if len(self._started) >= MAX_TIMED:  # replies that never left (peers gone)
            self._started.clear()
        if request.op in TIMED_OPS:
            self._started[(peer, request.request_id)] = (request.op.value, now)
        try:
            out = self.core.handle(peer, request, now, user)
        except Exception as exc:  # a bug must not kill the server: log it, answer, go on
            log.exception("internal error handling a %s request", request.op)
            out = [self.core.error(peer, request.request_id, "internal",
                                   f"internal server error: {exc}")]
        self._send_all(out)

    def _send_all(self, out: list[Outgoing]) -> None:
        for outgoing in out:
            self._send(outgoing)

    def _send(self, outgoing: Outgoing) -> None:
        if self._socket is None:
            return
        frames: list[Any] = encode_reply(outgoing.reply)
        pins = []
        for lease in outgoing.leases:
            index = 1 + lease.frame
            if memoryview(frames[index]).nbytes >= ZERO_COPY_BYTES:
                frame = zmq.Frame(frames[index], track=True)
                frames[index] = frame
                pins.append((lease.holder, frame.tracker))
        timed = self._started.pop((outgoing.peer, outgoing.reply.request_id), None)
        if timed is not None:  # from receipt to reply, waits in rounds included
            self.core.state.latency.observe(timed[0], time.monotonic() - timed[1])
        held = self._held
        if held is not None and held.peer == outgoing.peer and not pins and held.take(frames):
            return
        if self._emit(outgoing.peer, frames):
            for holder, tracker in pins:
                holder.pin(tracker)

    def _emit(self, peer: bytes, frames: list[Any]) -> bool:
        assert self._socket is not None
        try:
            self._socket.send([peer, *frames])
        except zmq.ZMQError as exc:  # peer gone or its queue full: it will retry
            log.debug("reply to %r dropped: %s", peer, exc)
            return False
        return True


def _user_id(frame: zmq.Frame) -> str:
    """The CURVE user id ZAP gave the connection ("" if there is none: no role)."""
    try:
        return str(frame.get("User-Id"))
    except zmq.ZMQError:
        return ""


def _free_port_on(endpoint: str) -> str:
    """A bind address for the change stream: the same host as ``endpoint``, any port."""
    if endpoint.startswith("tcp://"):
        return endpoint.rsplit(":", 1)[0] + ":*"
    return endpoint + "-changes"  # ipc:// or inproc://
