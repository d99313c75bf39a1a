"""The primary's replication stream: every numbered change, and heartbeats, on PUB.

Changes go out zero-copy (a logged change is never written again) and only while a
standby is attached: it says hello before it subscribes, and the snapshot it then reads
covers everything before, so with none attached nothing needs the stream. PUB never
blocks: past the high-water mark it drops, and the standby, seeing the gap in the change
numbers, reads a fresh snapshot.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from zps.codecs import Compressed
from zps.curve import KeyPair, make_curve_server
from zps.protocol import (
    Beat,
    EncodedMeta,
    Replicated,
    TensorMeta,
    encode_beat,
    encode_change,
)
from zps.store import Change
from zps.store.store import RowPayload
from zps.transport import bind

STREAM_DOMAIN = "zps-changes"  # the ZAP domain of the change stream (standby keys only)
STREAM_HWM = 256  # changes (each at most chunk_bytes, 4 MiB by default) queued for a standby


class Publisher:
    """The PUB socket of a primary. ``meta_of(change)`` adds what a created table's change
    carries besides its value (its optimizer, the cluster layout)."""

    def __init__(self, context: zmq.Context, address: str, epoch: int,
                 active: Callable[[], bool], meta_of: Callable[[Change], dict[str, Any]],
                 drop_every: int = 0, hwm: int = STREAM_HWM,
                 curve: KeyPair | None = None) -> None:
        self._socket = context.socket(zmq.PUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.SNDHWM, hwm)
        try:
            if curve is not None:  # only standby keys may subscribe (see zps.server.zap)
                make_curve_server(self._socket, curve, STREAM_DOMAIN)
            self.endpoint = bind(self._socket, address, "the change stream (--pub-bind)")
        except BaseException:
            self._socket.close(linger=0)
            raise
        self.epoch = epoch
        self._active = active
        self._meta_of = meta_of
        self._drop_every = drop_every
        self._count = 0

    def publish(self, change: Change) -> None:
        """Send ``change`` to the standby (if one is attached)."""
        if not self._active():
            return
        self._count += 1
        if self._drop_every and self._count % self._drop_every == 0:
            return  # injected loss (tests): the standby must notice the gap
        frames = encode_change(_wire_change(change, self.epoch, self._meta_of(change)))
        self._socket.send_multipart(frames, copy=False)

    def beat(self, seq: int) -> None:
        self._socket.send_multipart(encode_beat(Beat(seq, self.epoch)))

    def close(self) -> None:
        self._socket.close(linger=0)


def _wire_change(change: Change, epoch: int, meta: dict[str, Any]) -> Replicated:
    given = change.given
    if isinstance(given, RowPayload):
        frames = [("ids", given.ids)] if change.kind != "rows" else \
            [("ids", given.ids), ("updates", np.ascontiguousarray(given.updates))]
        if change.kind == "create_rows":
            frames = []
        if change.kind == "rows":
            meta = {**meta, **(change.meta or {}), "now": given.now}
        return Replicated(change.seq, epoch, change.table, change.version, change.kind,
                          change.given_scale, change.requests, meta, None, None,
                          tuple(a for _, a in frames),
                          tuple(TensorMeta.of(n, a) for n, a in frames))
    if isinstance(given, Compressed):
        enc = given.encoded
        packed = EncodedMeta(change.table, enc.codec, enc.params, enc.dtype, enc.shape,
                             tuple((p.dtype.name, int(p.nbytes)) for p in enc.parts))
        return Replicated(change.seq, epoch, change.table, change.version, change.kind,
                          change.given_scale, change.requests, meta, None, packed,
                          tuple(enc.parts))
    dense = np.ascontiguousarray(given)
    return Replicated(change.seq, epoch, change.table, change.version, change.kind,
                      change.given_scale, change.requests, meta,
                      TensorMeta.of(change.table, dense), None, (dense,))
