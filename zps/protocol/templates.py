"""Request headers as templates: encoded once by a client, validated once by a server.

A request header is a msgpack map whose last entries are ``"w"`` (updates only) and
``"r"``, each a uint64 (``0xcf`` and 8 bytes). Everything before them, the *prefix*
(version, op, client, tensors, names, options), is the same for every request of one kind
from one client: a training loop pushes the same tables every step. So a client packs the
prefix once and appends 11 or 22 bytes a request (``suffix``), and a server's
``TemplateCache`` keeps what validating a prefix gave under its exact bytes: a header whose
prefix it has seen is decoded by checking only the id, the watermark and the frame sizes
(and if one of those is wrong, by the ordinary decoding, which says what).

The cache changes nothing a server decides: it learns a prefix only when the ordinary
decoding of the whole header succeeded and the prefix is byte for byte the one a zps
client packs for that request (so ``r`` and ``w`` are the top-level fields), and a hit
must end the same way (with or without ``w``). Any other header, compact integers, keys
in another order or requests with options included, is decoded the ordinary way.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from zps.protocol.fields import MAX_ID, frame_sizes
from zps.protocol.messages import Request

_R = b"\xa1r\xcf"  # fixstr "r", then uint64
_W = b"\xa1w\xcf"
_ID = struct.Struct(">Q")
_WR = struct.Struct(">3sQ3sQ")
_RONLY = struct.Struct(">3sQ")
R_BYTES = _RONLY.size  # 11
WR_BYTES = _WR.size  # 22
MAX_PREFIX = 1024  # longer prefixes (many tables in one message) are not kept
MAX_TEMPLATES = 512  # per server; the cache starts afresh when full


def prefix(header: dict[str, Any], watermark: bool) -> bytes:
    """The packed ``header`` (without ``r`` and ``w``) as a prefix: its map announces the
    one or two entries ``suffix`` appends. (A request header has at most 9 entries: a
    fixmap, whose count is the low bits of its first byte.)"""
    body: bytes = msgpack.packb(header)
    if body[0] & 0xF0 != 0x80 or (body[0] & 0x0F) + 1 + watermark > 15:
        raise ValueError("a request header is a map of at most 13 fields")
    return bytes((body[0] + 1 + watermark,)) + body[1:]


def suffix(request_id: int, watermark: int | None) -> bytes:
    """The fixed-width ``w`` (if any) and ``r`` entries that end a request header."""
    if watermark is None:
        return _RONLY.pack(_R, request_id)
    return _WR.pack(_W, watermark, _R, request_id)


def split(header: bytes) -> tuple[bytes, int | None, int] | None:
    """``(prefix, watermark, request id)`` if ``header`` ends with fixed-width entries
    (``w`` optional), else None."""
    n = len(header)
    if n <= R_BYTES or header[n - R_BYTES:n - 8] != _R:
        return None
    rid = _ID.unpack_from(header, n - 8)[0]
    if n > WR_BYTES and header[n - WR_BYTES:n - 19] == _W:
        return header[:n - WR_BYTES], _ID.unpack_from(header, n - 19)[0], rid
    return header[:n - R_BYTES], None, rid


class TemplateCache:
    """Validated request prefixes of one server, by their exact bytes."""

    def __init__(self) -> None:
        # prefix -> (the request it announces, its frame sizes, whether "w" follows it)
        self._known: dict[bytes, tuple[Request, list[int], bool]] = {}
        self.hits = 0

    def decode(self, frames: Sequence[Any]) -> Request | None:
        """The request in ``frames`` if its header's prefix is known and the rest checks
        out (then it is the ``Request`` the ordinary decoding gives); None otherwise, and
        the ordinary decoding says what is wrong, in its order."""
        header = _bytes(frames[0])
        parts = split(header) if header is not None else None
        if parts is None:
            return None
        found = self._known.get(parts[0])
        if found is None:
            return None
        known, sizes, has_watermark = found
        _, watermark, rid = parts
        buffers = tuple(frames[1:])
        if (watermark is not None) != has_watermark or rid > MAX_ID or (
                watermark is not None and watermark > rid) or len(buffers) != len(sizes):
            return None
        for size, buffer in zip(sizes, buffers, strict=True):
            if memoryview(buffer).nbytes != size:
                return None
        self.hits += 1
        return Request(known.op, known.client_id, rid, known.tensors, known.names,
                       {}, buffers, known.encoded, watermark)

    def learn(self, header: Any, request: Request,
              canonical: Callable[[Request], bytes]) -> None:
        """Keep ``request``'s prefix, if ``header`` (its header frame, which decoded to it
        the ordinary way) is exactly what a zps client sends for it: its prefix is
        ``canonical(request)`` (the request's own, packed), and its id and watermark the
        trailing fixed-width entries. Requests with options or compressed tensors are not
        kept (a loss, codec scales: new each call)."""
        if request.options or request.encoded:
            return
        raw = _bytes(header)
        parts = split(raw) if raw is not None else None
        if parts is None or len(parts[0]) > MAX_PREFIX:
            return
        head, watermark, rid = parts
        if rid != request.request_id or watermark != request.watermark \
                or head != canonical(request):
            return
        if len(self._known) >= MAX_TEMPLATES:
            self._known.clear()
        self._known[head] = (Request(request.op, request.client_id, 0, request.tensors,
                                     request.names, {}, (), request.encoded),
                             frame_sizes(request.tensors, request.encoded),
                             watermark is not None)


def _bytes(frame: Any) -> bytes | None:
    """A header frame's bytes (None if it is not a buffer of bytes)."""
    value = getattr(frame, "bytes", None)  # a zmq.Frame (its bytes are kept once read)
    if isinstance(value, bytes):
        return value
    try:
        view = memoryview(frame)
    except TypeError:
        return None
    return view.tobytes() if view.itemsize == 1 else None
