"""``Client``: the blocking worker library for ordinary training loops.

It plans each call with the same ``Session`` as ``AsyncClient`` and sends the messages on
plain (blocking-API) DEALER sockets, waiting with ``zmq.Poller``: no event loop on the hot
path, so a small push costs little more than a raw ZeroMQ round trip. Works the same
inside a running event loop (Jupyter). A small thread sends heartbeats while the training
loop computes.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from zps.client.placement import Layout
from zps.client.session import (
    HANDOVER_ERRORS,
    Arrays,
    Message,
    Session,
    SessionProperties,
    check_reply,
    first_request_id,
    unreachable_message,
)
from zps.config import ClientConfig
from zps.errors import ClosedError, ProtocolError, RejectedError, ServerUnreachable, ZpsError
from zps.protocol import (
    Op,
    Reply,
    Request,
    decode_reply,
    decode_reply_header,
    encode_request,
)
from zps.protocol.framing import frame_sizes
from zps.transport import (
    discard_rest,
    more_frames,
    open_socket,
    readable,
    recv_frame,
    recv_frame_into,
    send_frames,
)

log = logging.getLogger("zps.client")



@dataclass(slots=True)
class _Server:
    """One shard: the server requests go to, and its hot standby if it has one."""

    address: str
    socket: zmq.Socket
    server_id: str | None = None
    alt_address: str = ""
    alt_socket: zmq.Socket | None = None
    epoch: int = 0  # the newest epoch seen for this shard: older answers are ignored

    def switch(self) -> None:
        """Send to the other server of the shard from now on."""
        assert self.alt_socket is not None
        self.address, self.alt_address = self.alt_address, self.address
        self.socket, self.alt_socket = self.alt_socket, self.socket
        self.server_id = None  # learnt again from its hello


@dataclass(slots=True)
class _InFlight:
    index: int
    message: Message
    frames: list[Any]
    deadline: float
    attempts_left: int
    sinks: tuple[np.ndarray, ...] = ()  # where the reply's arrays go, part by part


class Client(SessionProperties):
    """Blocking zps client with the same methods as ``AsyncClient``.

    ::

        with zps.Client(["tcp://127.0.0.1:5570"]) as ps:
            ps.init({"w": w0})
            ps.push_pull({"w": dw})

    Constructing it connects to every server (``ServerUnreachable`` if one does not answer
    within ``connect_timeout``). Each request is resent after ``timeout`` seconds, up to
    ``retries`` times, with the same id (a push is applied once); then ``ServerUnreachable``.
    Use a ``Client`` from one thread at a time. ``close()`` says goodbye and frees everything.
    """

    def __init__(
        self,
        servers: str | Sequence[str],
        config: ClientConfig | None = None,
        **overrides: Any,
    ) -> None:
        self._session = Session(servers, config, overrides)
        self._context = zmq.Context()
        self._ids = itertools.count(first_request_id())
        self._poller = zmq.Poller()
        self._servers: list[_Server] = []
        self._heartbeats: _Heartbeats | None = None
        self._closed = False
        self._watches: dict[int, int] = {}  # request id of a WATCH -> shard
        standbys = self._session.standbys
        try:
            for i, address in enumerate(self._session.servers):
                server = _Server(address, self._dealer(address))
                if standbys[i]:
                    server.alt_address, server.alt_socket = standbys[i], self._dealer(
                        standbys[i])
                self._servers.append(server)
            self._hello(first=True)
        except BaseException:
            self._close_sockets()
            raise
        if self.config.heartbeat_interval > 0:
            self._heartbeats = _Heartbeats(
                [*self._session.servers, *(a for a in standbys if a)], self.client_id,
                self.config.heartbeat_interval)

    def _dealer(self, address: str) -> zmq.Socket:
        sock = open_socket(self._context, zmq.DEALER, address)
        self._poller.register(sock, zmq.POLLIN)
        return sock

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ public API

    def init(self, tensors: Mapping[str, Any],
             optimizer: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
        """See ``AsyncClient.init``."""
        layout, arrays = self._session.plan_init(tensors)
        current = self._call(Op.INIT, layout, list(arrays), arrays,
                             Session.init_options(optimizer))
        self._session.layout = layout
        return current

    def pull(self, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """See ``AsyncClient.pull``."""
        wanted = self._session.wanted(names)
        return self._call(Op.PULL, self._session.need_layout(), wanted)

    def push(self, deltas: Mapping[str, Any], *, loss: float | None = None,
             weight: float | None = None) -> None:
        """See ``AsyncClient.push``."""
        arrays = self._session.deltas(deltas)
        self._call(Op.PUSH, self._session.need_layout(), list(arrays), arrays,
                   Session.push_options(loss, weight))

    def push_pull(self, deltas: Mapping[str, Any], *, loss: float | None = None,
                  weight: float | None = None) -> dict[str, np.ndarray]:
        """See ``AsyncClient.push_pull``."""
        arrays = self._session.deltas(deltas)
        return self._call(Op.PUSH_PULL, self._session.need_layout(), list(arrays), arrays,
                          Session.push_options(loss, weight))

    def stats(self) -> list[dict[str, Any]]:
        """See ``AsyncClient.stats``."""
        replies = self._exchange(self._to_each(Op.STATS), self.config.timeout, 1)
        return [dict(r.info, address=s.address)
                for r, s in zip(replies, self._servers, strict=True)]

    def close(self) -> None:
        """Say goodbye to the servers (best effort), close the sockets, stop the heartbeats."""
        if self._closed:
            return
        if self._heartbeats is not None:
            self._heartbeats.stop()
        with contextlib.suppress(ZpsError):
            self._exchange(self._to_each(Op.BYE), 1.0, 1)
        self._close_sockets()

    # ------------------------------------------------------------ internals

    def _close_sockets(self) -> None:
        self._closed = True
        for server in self._servers:
            server.socket.close(linger=0)
            if server.alt_socket is not None:
                server.alt_socket.close(linger=0)
        self._context.term()

    def _hello(self, first: bool = False) -> None:
        """Register with the primary of every shard (asking a shard's standby too, and
        taking whichever says it is the primary with the newest epoch), then watch each
        standby so a takeover is known the moment it happens."""
        if first and any(s.alt_socket is not None for s in self._servers):
            self._find_primaries()
        role = {"role": self.config.role}
        hellos = [Message(i, Op.HELLO, (), options=role) for i in range(len(self._servers))]
        replies = self._exchange(hellos, self.config.connect_timeout, 1)
        for server, reply in zip(self._servers, replies, strict=True):
            server.server_id = reply.info["sid"]
            server.epoch = max(server.epoch, int(reply.info.get("epoch", 0)))
        self._session.hello = [r.info for r in replies]
        for i, server in enumerate(self._servers):
            if server.alt_socket is not None and i not in self._watches.values():
                self._watch(i)

    def _find_primaries(self) -> None:
        """Point each shard with a standby at whichever of its two servers is primary."""
        asked: dict[tuple[zmq.Socket, int], tuple[int, bool]] = {}
        for i, server in enumerate(self._servers):
            for alt, sock in ((False, server.socket), (True, server.alt_socket)):
                if sock is not None:
                    rid = next(self._ids)
                    asked[(sock, rid)] = (i, alt)
                    send_frames(sock, encode_request(Request(
                        Op.HELLO, self.client_id, rid, options={"role": self.config.role})))
        best: dict[int, tuple[int, bool]] = {}  # shard -> (epoch, on the alternate)
        deadline = time.monotonic() + self.config.connect_timeout
        settle: float | None = None  # once every shard has a primary, wait a little more
        while asked and time.monotonic() < (settle or deadline):
            wait = (settle or deadline) - time.monotonic()
            for sock, _ in self._poller.poll(max(1, math.ceil(wait * 1000))):
                while readable(sock):
                    try:
                        reply = decode_reply(sock.recv_multipart())
                    except ProtocolError:
                        continue
                    key = (sock, reply.request_id or 0)
                    if key not in asked:
                        continue
                    i, alt = asked.pop(key)
                    info = reply.info
                    if reply.ok and info.get("role") == "primary":
                        epoch = int(info.get("epoch", 0))
                        if i not in best or epoch > best[i][0]:
                            best[i] = (epoch, alt)
            if settle is None and len(best) == len(self._servers):
                settle = min(deadline, time.monotonic() + 0.5)
        for i, (epoch, alt) in best.items():
            server = self._servers[i]
            if alt:
                log.warning("server %s is not the primary of its shard; using %s (epoch %d)",
                            server.address, server.alt_address, epoch)
                server.switch()
            server.epoch = max(server.epoch, epoch)

    def _to_each(self, op: Op) -> list[Message]:
        return [Message(i, op, ()) for i in range(len(self._servers))]

    def _call(self, op: Op, layout: Layout, names: list[str],
              arrays: Mapping[str, np.ndarray] | None = None,
              options: dict[str, Any] | None = None) -> Arrays:
        messages = self._session.messages(op, layout, names, arrays, options)
        out = {} if op == Op.PUSH else self._session.outputs(layout, names)
        attempts = 1 + self.config.retries
        rids = [next(self._ids) for _ in messages]  # kept on resends: applied at most once
        try:
            self._exchange(messages, self.config.timeout, attempts, out, rids)
        except RejectedError as exc:
            if exc.code != "not_registered":
                raise
            # Declared dead while alive (a long pause, a network blip), or a standby that
            # took over: register again and send the call once more, with the same request
            # ids (a server that already applied a message of it answers without applying).
            log.warning("%s; registering again", exc)
            self._hello()
            self._exchange(messages, self.config.timeout, attempts, out, rids)
        return out

    def _exchange(self, messages: list[Message], timeout: float, attempts: int,
                  out: Arrays | None = None, rids: list[int] | None = None) -> list[Reply]:
        """Send ``messages`` (at most ``max_inflight`` at once) and return their replies.

        With ``out``, the arrays each reply carries are received straight into their
        places in ``out`` (no copy through an intermediate frame).
        """
        if self._closed:
            raise ClosedError("this zps.Client is closed")
        queue = deque(enumerate(messages))
        inflight: dict[int, _InFlight] = {}
        replies: list[Reply | None] = [None] * len(messages)
        while queue or inflight:
            while queue and len(inflight) < self.config.max_inflight:
                index, message = queue.popleft()
                rid = rids[index] if rids else next(self._ids)
                frames = encode_request(message.request(self.client_id, rid))
                sinks = self._session.sinks(message, out) if out else ()
                inflight[rid] = _InFlight(index, message, frames, 0.0, attempts, sinks)
                self._transmit(inflight[rid], timeout)
            self._wait(inflight, replies, timeout, attempts, out)
        return [r for r in replies if r is not None]

    def _transmit(self, entry: _InFlight, timeout: float) -> None:
        entry.attempts_left -= 1
        entry.deadline = time.monotonic() + timeout
        with contextlib.suppress(zmq.Again):  # queue full: counts as a lost attempt
            send_frames(self._servers[entry.message.server].socket, entry.frames)

    def _wait(self, inflight: dict[int, _InFlight], replies: list[Reply | None],
              timeout: float, attempts: int, out: Arrays | None) -> None:
        """Block until a reply arrives or a deadline passes; resend or give up on the latter."""
        wait = max(0.0, min(e.deadline for e in inflight.values()) - time.monotonic())
        for sock, _ in self._poller.poll(math.ceil(wait * 1000)):
            self._receive(sock, inflight, replies, out)
        now = time.monotonic()
        for entry in list(inflight.values()):
            if entry.deadline > now:
                continue
            server = self._servers[entry.message.server]
            if server.alt_socket is not None:
                self._watch(entry.message.server)  # in case the standby lost the first one
            if entry.attempts_left <= 0:
                raise ServerUnreachable(
                    unreachable_message(server.address, entry.message.op, attempts, timeout))
            self._transmit(entry, timeout)

    def _watch(self, index: int) -> None:
        """Ask shard ``index``'s standby to answer once it has taken over (a primary
        answers at once, so a takeover missed while the client was away is noticed)."""
        server = self._servers[index]
        assert server.alt_socket is not None
        rid = next(self._ids)
        self._watches[rid] = index
        send_frames(server.alt_socket, encode_request(Request(Op.WATCH, self.client_id, rid)))

    def _failover(self, index: int, info: dict[str, Any],
                  inflight: dict[int, _InFlight]) -> None:
        """Shard ``index``'s standby has taken over: send there from now on, resending what
        is in flight (same request ids: the dedup state came with the replication)."""
        server = self._servers[index]
        epoch = int(info.get("epoch", 0))
        if epoch <= server.epoch or server.alt_socket is None:
            return
        log.warning("zps server %s took over from %s (epoch %d); switching",
                    server.alt_address, server.address, epoch)
        server.switch()
        server.epoch = epoch
        self._session.held.clear()  # delta pulls start again from whole tables
        for entry in inflight.values():
            if entry.message.server == index:
                entry.attempts_left += 1
                self._transmit(entry, self.config.timeout)
        self._watch(index)  # the old primary, back as the new standby, may take over later

    def _receive(self, sock: zmq.Socket, inflight: dict[int, _InFlight],
                 replies: list[Reply | None], out: Arrays | None) -> None:
        while readable(sock):
            try:
                reply = decode_reply_header(recv_frame(sock))
            except ProtocolError as exc:
                discard_rest(sock)
                log.warning("dropped a malformed reply: %s", exc)
                continue
            entry = inflight.get(reply.request_id) if reply.request_id is not None else None
            buffers = _read_buffers(sock, reply, entry.sinks if entry else ())
            watched = self._watches.pop(reply.request_id or 0, None)
            if watched is not None and reply.ok:
                self._failover(watched, reply.info, inflight)
                continue
            if entry is None:
                continue  # a late answer to an attempt already answered or abandoned
            if buffers is None:
                log.warning("dropped a reply whose arrays do not match its header")
                continue  # the request times out and is sent again
            server = self._servers[entry.message.server]
            epoch = reply.info.get("epoch", server.epoch)
            if sock is not server.socket or (isinstance(epoch, int) and epoch < server.epoch):
                continue  # from a server this client has left, or a deposed primary
            if reply.error is not None and reply.error[0] in HANDOVER_ERRORS \
                    and server.alt_socket is not None:
                continue  # the standby is taking over: the watch (or the retry) goes on
            del inflight[reply.request_id]  # type: ignore[arg-type]
            checked = check_reply(
                Reply(reply.request_id, reply.tensors, reply.info, reply.error, buffers,
                      reply.encoded),
                entry.message.op, server.server_id, server.address)
            if out and not entry.sinks and entry.message.op != Op.PUSH:
                self._session.scatter(checked, entry.message, out)
            replies[entry.index] = checked


def _read_buffers(sock: zmq.Socket, reply: Reply,
                  sinks: tuple[np.ndarray, ...]) -> tuple[Any, ...] | None:
    """The array frames after a reply header: into ``sinks`` when they match the header
    exactly, else as frames. None (all frames consumed) if they disagree with the header."""
    metas = reply.tensors
    use_sinks = not reply.encoded and len(sinks) == len(metas) and all(
        m.dtype == s.dtype.name and m.shape == s.shape for m, s in zip(metas, sinks, strict=True))
    got: list[Any] = []
    for i, nbytes in enumerate(frame_sizes(reply)):
        if not more_frames(sock):
            return None
        if use_sinks:
            if recv_frame_into(sock, sinks[i]) != nbytes:
                discard_rest(sock)
                return None
            got.append(sinks[i])
        else:
            frame = recv_frame(sock)
            if len(frame) != nbytes:
                discard_rest(sock)
                return None
            got.append(frame)
    if more_frames(sock):
        discard_rest(sock)
        return None
    if sinks and not use_sinks and reply.error is None:
        return None  # a successful reply carrying other arrays than asked for
    return tuple(got)


class _Heartbeats:
    """A daemon thread that sends this client's heartbeats from sockets of its own."""

    # Ids far above the client's own requests, so the two never meet in a dedup window.
    FIRST_ID = 1 << 62

    def __init__(self, addresses: list[str], client_id: str, interval: float) -> None:
        self._addresses = addresses
        self._client_id = client_id
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zps-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with zmq.Context() as ctx:
            sockets = []
            for address in self._addresses:
                sock = ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.SNDHWM, 4)
                sock.connect(address)
                sockets.append(sock)
            rid = self.FIRST_ID
            while not self._stop.wait(self._interval):
                rid += 1
                frames = encode_request(Request(Op.HEARTBEAT, self._client_id, rid))
                for sock in sockets:
                    while sock.poll(0):  # answers are not needed: drop them
                        sock.recv_multipart()
                    # Server unreachable for now: the main path will report it.
                    with contextlib.suppress(zmq.Again):
                        sock.send_multipart(frames, zmq.NOBLOCK)
            for sock in sockets:
                sock.close(linger=0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
