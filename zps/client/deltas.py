"""Delta pulls on the client (sans-IO): the copies it holds, and bringing them up to date.

With a pull codec, the client keeps a copy of every table part it pulled and tells the
server the version it holds; the server answers with the change since then (``info
["delta"]``: per part, the base version and the steps to add) or the whole part. A reply
whose base is not what the client holds (its copy was dropped by a failover, say) is not
an error for the caller: the pull is sent again, asking for whole parts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from zps.client.plans import Arrays, Message, place
from zps.codecs import Codec, CodecError, Compressed, Encoded, add_scaled, check_parts, codec_for
from zps.config import ClientConfig
from zps.errors import ProtocolError, ZpsError
from zps.protocol import Reply


class StaleBase(ZpsError):
    """A delta reply does not start from the copy this client holds: pull whole parts."""


class HeldCopies:
    """The copy of each part this client holds, and its version."""

    def __init__(self, codec: Codec, config: ClientConfig) -> None:
        self.codec = codec
        self.spec = config.pull_codec or "none"
        self._refresh_every = max(1, config.full_pull_every)
        self._pulls = 0
        self._held: dict[str, tuple[int, np.ndarray]] = {}

    def clear(self) -> None:
        """Forget every copy (a failover): the next pull fetches whole tables."""
        self._held.clear()

    def next_pull(self) -> bool:
        """Count a pull; True when this one should refresh whole (lossy codecs only)."""
        self._pulls += 1
        return not self.codec.lossless and self._pulls % self._refresh_every == 0

    def options(self, message: Message, whole: bool) -> dict[str, Any]:
        """The pull options of ``message``: the codec, and the versions held (unless
        ``whole``, which asks for every part whole)."""
        have = {} if whole else {p.key: self._held[p.key][0] for p in message.parts
                                 if p.key in self._held}
        options = {**message.options, "pull_codec": self.spec}
        if have:
            options["have"] = have
        return options

    def scatter(self, reply: Reply, message: Message, out: Arrays) -> None:
        """Bring each part's copy up to date with ``reply`` and put it into ``out``.
        Raises ``StaleBase`` (nothing changed) when a delta does not start from the copy
        held, ``ZpsError`` for a malformed reply."""
        deltas = reply.info.get("delta", {})
        versions = reply.info.get("versions", {})
        if not isinstance(deltas, dict) or not isinstance(versions, dict):
            raise ZpsError("malformed delta reply from the server")
        for part in message.parts:
            if part.key in deltas:
                base = _base(deltas[part.key])
                held = self._held.get(part.key)
                if held is None or held[0] not in (base, versions.get(part.key)):
                    raise StaleBase(f"the server sent the change of {part.key!r} since "
                                    f"version {base}, but this client holds "
                                    f"{held[0] if held else 'nothing'}")
        dense = reply.dense_list()
        whole = {m.name: a for m, a in zip(reply.tensors, dense, strict=True)
                 if m.name not in deltas}
        for part in message.parts:
            version = versions.get(part.key)
            if not isinstance(version, int):
                raise ZpsError(f"the server's answer for {part.key!r} carries no version")
            if part.key in deltas:
                copy = self._apply(part.key, deltas[part.key], version, dense, reply)
            elif part.key in whole:
                copy = np.array(whole[part.key])
            else:
                raise ZpsError(f"the server's answer lacks {part.key!r}")
            self._held[part.key] = (version, copy)
            place(out, part)[...] = copy

    def _apply(self, key: str, delta: Any, version: int, dense: list[np.ndarray],
               reply: Reply) -> np.ndarray:
        """The held copy of ``key`` with a delta reply's steps applied in order."""
        held_version, copy = self._held[key]
        if held_version == version:
            return copy  # a resent pull whose first answer already came
        try:
            _, steps = delta
            encoded = reply.encoded_list()
            for kind, index, scale in steps:
                if kind == "d":
                    add_scaled(copy, dense[index], float(scale))
                else:
                    meta, parts = encoded[index]
                    enc = Encoded(meta.codec, meta.shape, meta.dtype, parts, meta.params)
                    codec = codec_for(meta.codec)
                    check_parts(codec, enc)
                    add_scaled(copy, Compressed(codec, enc), float(scale))
        except (TypeError, ValueError, IndexError, CodecError, ProtocolError) as exc:
            self._held.pop(key, None)  # half applied: pull it whole next time
            raise ZpsError(f"malformed delta for {key!r} from the server: {exc}") from None
        return copy


def _base(delta: Any) -> int:
    if not (isinstance(delta, list) and len(delta) == 2 and isinstance(delta[0], int)
            and isinstance(delta[1], list)):
        raise ZpsError("malformed delta step list from the server")
    return delta[0]
