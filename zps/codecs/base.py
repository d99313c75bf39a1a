"""What every codec provides, and the encoded form of one tensor (sans-IO).

A codec turns a dense update into a few flat arrays (``parts``) plus small scalars
(``params``) that travel in the message header, and back. ``decode_add`` adds the
decoded update into a table block by block, so a large compressed update never needs a
full-size dense temporary on the server. Encoding takes an array module (``numpy`` or
``cupy``); decoding runs on the server, in NumPy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from zps.errors import ProtocolError

# Elements decoded at a time by decode_add: bounds the temporary a decode needs.
DECODE_BLOCK = 1 << 18


@dataclass(frozen=True, slots=True)
class Encoded:
    """One compressed tensor: which codec, the dense shape and dtype, parts and params."""

    codec: str
    shape: tuple[int, ...]
    dtype: str
    parts: tuple[Any, ...]
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes on the wire for the parts (the header's few scalars aside)."""
        return sum(int(p.nbytes) for p in self.parts)


class Codec(Protocol):
    """Compression for one tensor; ``lossless`` codecs need no error feedback."""

    name: str
    lossless: bool

    def encode(self, xp: ModuleType, array: Any) -> Encoded: ...

    def part_specs(self, size: int, dtype: str,
                   params: dict[str, Any]) -> list[tuple[str, int]]:
        """The (dtype, length) each part must have for ``size`` elements of ``dtype``."""
        ...

    def decode_add(self, encoded: Encoded, out: np.ndarray, scale: float = 1.0) -> None:
        """``out += scale * decode(encoded)``, in blocks (``out`` is C-contiguous)."""
        ...


def decode(codec: Codec, encoded: Encoded) -> np.ndarray:
    """The dense update ``encoded`` stands for (a new array)."""
    out = np.zeros(encoded.shape, encoded.dtype)
    codec.decode_add(encoded, out)
    return out


def check_parts(codec: Codec, encoded: Encoded) -> None:
    """Validate an encoded tensor from the wire; ``ProtocolError`` naming the problem."""
    specs = codec.part_specs(encoded.size, encoded.dtype, encoded.params)
    if len(specs) != len(encoded.parts):
        raise ProtocolError("bad_frames", f"codec {codec.name} needs {len(specs)} buffers for a "
                                          f"tensor, got {len(encoded.parts)}")
    for i, ((dtype, length), part) in enumerate(zip(specs, encoded.parts, strict=True)):
        if part.dtype != np.dtype(dtype) or part.size != length:
            raise ProtocolError(
                "bad_frames",
                f"codec {codec.name} buffer {i} must be {length} x {dtype}, "
                f"got {part.size} x {part.dtype}",
            )
        if part.dtype.kind == "f" and part.size and not np.isfinite(part).all():
            raise ProtocolError("bad_frames", f"codec {codec.name} buffer {i} holds NaN or inf")
    check = getattr(codec, "check", None)
    if check is not None:
        check(encoded)


def require_finite(xp: ModuleType, array: Any, what: str = "update") -> None:
    """Lossy codecs refuse NaN and inf: they would poison scales and residuals."""
    if array.size and not bool(xp.isfinite(array).all()):
        raise ValueError(f"the {what} contains NaN or inf; lossy codecs cannot encode it")


def flat(array: Any) -> Any:
    """A 1-D view (or copy, if not contiguous) of ``array``."""
    return array.reshape(-1)


@dataclass(frozen=True, slots=True)
class Compressed:
    """A received compressed update, ready to be added into a table (server side)."""

    codec: Codec
    encoded: Encoded

    @property
    def nbytes(self) -> int:
        return self.encoded.nbytes

    def add_into(self, out: np.ndarray, scale: float = 1.0) -> None:
        """``out += scale * update``, decoded block by block."""
        self.codec.decode_add(self.encoded, out, scale)

    def dense(self) -> np.ndarray:
        return decode(self.codec, self.encoded)


def add_scaled(out: np.ndarray, update: np.ndarray | Compressed, scale: float = 1.0) -> None:
    """``out += scale * update`` in place, exactly as a server applies a change (a replica
    that applies the same changes in the same order holds the same bits)."""
    if isinstance(update, Compressed):
        update.add_into(out, scale)
    elif scale != 1.0:
        out += np.multiply(update, scale, dtype=out.dtype)
    else:
        np.add(out, update, out=out)
