"""Several requests in one message (sans-IO): small requests to one server, coalesced.

A client that has several small requests ready for one server at once (an ``AsyncClient``'s
calls started in one turn of its loop, requests held back by ``max_inflight`` and released
together) sends them as one ZeroMQ message: an *envelope* frame, then each request's own
frames, unchanged, one after the other. The envelope is a msgpack map
``{"v": 1, "op": "batch", "k": [n1, n2, ...]}``: how many frames each request has. A
server splits the message with ``split_batch`` (checked: counts, total size) and decodes
and answers every request on its own, exactly as if it had come alone; a request that is
wrong gets its own error, the others go on. Only servers that say so in their hello answer
(``"batch"``: the most requests they take in one message) are sent batches.

The point is the server's per-message cost, which dominates small requests: one receive
and one wake-up of its loop for many requests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from zps.protocol.fields import DecodeError, Limits, check_version, is_int, unpack_header
from zps.protocol.messages import PROTOCOL_VERSION

MAX_BATCH = 64  # requests one message may carry (what a server says in its hello)
BATCH_REQUEST_BYTES = 1 << 16  # a larger request travels alone (its size is the cost)
BATCH_BYTES = 1 << 20  # the most one batch carries (less where a server takes less)
ENVELOPE_BYTES = 512  # more than any envelope of MAX_BATCH counts takes
# Every envelope starts with these bytes (a map of 3: v, op, then k), so a server tells a
# batch from a request by its first bytes.
BATCH_PREFIX: bytes = msgpack.packb({"v": PROTOCOL_VERSION, "op": "batch", "k": []})[:-1]

Send = tuple[int, list[Any]]  # (endpoint, frames), as the client engine queues them


def encode_batch(messages: Sequence[Sequence[Any]]) -> list[Any]:
    """One message carrying ``messages`` (each a request's frames), in order."""
    frames: list[Any] = [BATCH_PREFIX + msgpack.packb([len(m) for m in messages])]
    for message in messages:
        frames.extend(message)
    return frames


def is_batch(frame: Any) -> bool:
    """Whether a message whose first frame is ``frame`` is a batch envelope."""
    try:
        view = memoryview(frame)
    except TypeError:
        return False
    return view.nbytes > len(BATCH_PREFIX) and view.itemsize == 1 and \
        view[:len(BATCH_PREFIX)] == BATCH_PREFIX


def batch_counts(envelope: Any, limits: Limits) -> list[int]:
    """How many frames each message in a batch has, from its envelope frame.
    Raises ``DecodeError`` (a ``ProtocolError``) if the envelope is malformed."""
    header = unpack_header(envelope, limits)
    check_version(header)
    counts = header.get("k")
    if header.get("op") != "batch" or set(header) != {"v", "op", "k"} \
            or not isinstance(counts, list) or not 1 <= len(counts) <= MAX_BATCH \
            or not all(is_int(n) and n >= 1 for n in counts):
        raise DecodeError("bad_header", f"a batch envelope is {{v, op: 'batch', k}}, k "
                                        f"listing 1..{MAX_BATCH} frame counts of at least 1")
    return counts


def split_batch(frames: Sequence[Any], limits: Limits) -> list[Sequence[Any]]:
    """The messages' frames in the batch ``frames`` (its envelope first). Raises
    ``DecodeError`` if the envelope is malformed, its counts do not add up to the frames
    that follow, or the message is over the size limit; then nothing in it is handled."""
    counts = batch_counts(frames[0], limits)
    if sum(counts) != len(frames) - 1:
        raise DecodeError("bad_frames", f"the batch announces {sum(counts)} frames after its "
                                        f"envelope and carries {len(frames) - 1}")
    total = sum(memoryview(f).nbytes for f in frames)
    if total > limits.max_message_bytes:
        raise DecodeError("too_large", f"batch of {total} bytes exceeds the server's limit "
                                       f"of {limits.max_message_bytes} bytes")
    parts: list[Sequence[Any]] = []
    start = 1
    for n in counts:
        parts.append(frames[start:start + n])
        start += n
    return parts


def coalesce(sends: list[Send], batch_limit: Callable[[int], tuple[int, int]]) -> list[Send]:
    """``sends`` with the small requests to each endpoint that takes batches joined into
    batches. ``batch_limit(endpoint)``: the most requests it takes in one message (0 or 1
    for none) and the most bytes (its ``max_message_bytes``). Requests to one endpoint
    keep their order; a large one goes alone."""
    out: list[Send] = []
    held: dict[int, list[list[Any]]] = {}  # endpoint -> the requests of its next batch
    held_bytes: dict[int, int] = {}

    def emit(endpoint: int) -> None:
        messages = held.pop(endpoint)
        del held_bytes[endpoint]
        out.append((endpoint, messages[0] if len(messages) == 1 else encode_batch(messages)))

    for endpoint, frames in sends:
        count, most = batch_limit(endpoint)
        limit, room = min(count, MAX_BATCH), min(most, BATCH_BYTES) - ENVELOPE_BYTES
        nbytes = sum(memoryview(f).nbytes for f in frames) if limit > 1 else 0
        alone = limit <= 1 or nbytes > min(BATCH_REQUEST_BYTES, room)
        if endpoint in held and (alone or len(held[endpoint]) >= limit
                                 or held_bytes[endpoint] + nbytes > room):
            emit(endpoint)
        if alone:
            out.append((endpoint, frames))
            continue
        held.setdefault(endpoint, []).append(frames)
        held_bytes[endpoint] = held_bytes.get(endpoint, 0) + nbytes
    for endpoint in list(held):
        emit(endpoint)
    return out


class HeldReplies:
    """The small replies a server has for the peer whose batch it is answering, to send
    as one batch once every request of it is answered."""

    def __init__(self, peer: bytes) -> None:
        self.peer = peer
        self.messages: list[list[bytes]] = []
        self.nbytes = 0

    def take(self, frames: Sequence[Any]) -> bool:
        """Keep a copy of ``frames`` (the tables they show may change before the batch
        leaves) if they are small and the batch has room; False: send them alone."""
        size = sum(memoryview(f).nbytes for f in frames)
        if size > BATCH_REQUEST_BYTES or len(self.messages) >= MAX_BATCH or \
                self.nbytes + size > BATCH_BYTES - ENVELOPE_BYTES:
            return False
        self.messages.append([bytes(memoryview(f)) for f in frames])
        self.nbytes += size
        return True

    def frames(self) -> list[Any]:
        """The message to send (there is a reply): the one reply alone, or a batch."""
        return self.messages[0] if len(self.messages) == 1 else encode_batch(self.messages)
