"""Reading replies off a DEALER socket for the engine (both clients use it).

The header frame comes first; when the engine says where the reply's arrays belong (the
caller's own arrays), the array frames are received straight into them, without an
intermediate copy. Anything that disagrees with its header is dropped (the request then
times out and is sent again).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import zmq

from zps.client.engine import DATA_OPS, Engine
from zps.client.plans import place
from zps.errors import ProtocolError
from zps.protocol import REPLY_DTYPES, Limits, Reply, decode_reply_header, frame_sizes
from zps.protocol.batch import batch_counts, is_batch
from zps.transport import discard_rest, more_frames, readable, recv_frame, recv_frame_into

log = logging.getLogger("zps.client")
DTYPES = {name: np.dtype(name) for name in REPLY_DTYPES}  # (dtype.name is slow to ask)


def read_replies(sock: zmq.Socket, endpoint: int, engine: Engine, limits: Limits,
                 now: float, first: zmq.Frame | None = None) -> None:
    """Hand every reply queued on ``sock`` (from ``endpoint``) to ``engine``; ``first``:
    the first frame of the first one, already received. A batch (the server's answers to
    a batch of requests) is read one reply after the other."""
    while True:
        try:
            frame, first = recv_frame(sock) if first is None else first, None
        except zmq.Again:
            return
        try:
            if frame.more and is_batch(frame):
                counts = batch_counts(frame, limits)
                for i, n in enumerate(counts):
                    if not (more_frames(sock) and _take(
                            sock, endpoint, engine, recv_frame(sock), now, limits, n,
                            i == len(counts) - 1)):
                        break
            else:
                _take(sock, endpoint, engine, frame, now, limits, None, True)
        except ProtocolError as exc:
            discard_rest(sock)
            log.warning("dropped a malformed reply from %s: %s", engine.endpoints[endpoint],
                        exc)
        if not readable(sock):  # (which also re-arms the descriptor)
            return


def _take(sock: zmq.Socket, endpoint: int, engine: Engine, frame: zmq.Frame, now: float,
          limits: Limits, frames: int | None, last: bool) -> bool:
    """Read the reply whose header is ``frame`` (of ``frames`` frames, when a batch says)
    and hand it to ``engine``; False if it was dropped (the rest of the message too).
    Raises ``ProtocolError`` for a malformed header."""
    header = decode_reply_header(frame, limits)
    if frames is not None and frames != 1 + len(frame_sizes(header.tensors, header.encoded)):
        raise ProtocolError("bad_frames", "a reply in a batch has other frames than its "
                                          "envelope says")
    sinks = reply_sinks(engine, endpoint, header)
    got = _read_buffers(sock, header, sinks, last)
    if got is None:
        log.warning("dropped a reply from %s whose arrays do not match its header",
                    engine.endpoints[endpoint])
        return False
    buffers, filled = got
    engine.receive(endpoint, Reply(header.request_id, header.tensors, header.info,
                                   header.error, buffers, header.encoded), now, filled)
    return True


def _read_buffers(sock: zmq.Socket, header: Reply, sinks: tuple[np.ndarray, ...],
                  last: bool) -> tuple[tuple[Any, ...], bool] | None:
    """The array frames after a reply header, received into ``sinks`` when given (they
    match the header), else as frames. None (all frames consumed) if they disagree with
    the header (``last``: no frames may follow them)."""
    got: list[Any] = []
    for i, nbytes in enumerate(frame_sizes(header.tensors, header.encoded)):
        if not more_frames(sock):
            return None
        if sinks:
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
    if last and more_frames(sock):
        discard_rest(sock)
        return None
    return tuple(got), bool(sinks)


def reply_sinks(engine: Engine, endpoint: int, reply: Reply) -> tuple[np.ndarray, ...]:
    """Where the arrays of ``reply`` (its header only) may be received straight into:
    the caller's arrays, when the reply is the expected one carrying exactly them, by
    name, shape and dtype."""
    pending = engine.awaiting(endpoint, reply)
    if pending is None or reply.error is not None or reply.encoded or pending.call.delta \
            or pending.call.op not in DATA_OPS:
        return ()
    parts = pending.message.parts
    sid, known = reply.info.get("sid"), engine.server_ids[pending.message.server]
    if len(reply.tensors) != len(parts) or (known is not None and sid is not None
                                            and sid != known):  # (restarted: not ours)
        return ()
    views = tuple(place(pending.call.out, part) for part in parts)
    for meta, view, part in zip(reply.tensors, views, parts, strict=True):
        if meta.name != part.key or view.dtype != DTYPES[meta.dtype] \
                or meta.shape != view.shape or not view.flags.c_contiguous:
            return ()
    return views
