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

from zps.codecs.blocks import add_scaled_chunks
from zps.codecs.errors import CodecError

# The dense dtypes a compressed tensor may stand for.
DENSE_DTYPES = frozenset({"float32", "float64"})


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

    def encode(self, xp: ModuleType, array: Any) -> Encoded:
        """``array`` compressed (its parts never alias it, except for lossless ``none``).
        Lossy codecs raise ``ValueError`` if it holds NaN or inf."""
        ...

    def part_specs(self, size: int, dtype: str,
                   params: dict[str, Any]) -> list[tuple[str, int]]:
        """The (dtype, length) each part must have for ``size`` elements of ``dtype``;
        ``CodecError`` (``bad_header``) if ``params`` are wrong."""
        ...

    def decode_add(self, encoded: Encoded, out: np.ndarray, scale: float = 1.0) -> None:
        """``out += scale * decode(encoded)``, in blocks (``out`` is C-contiguous)."""
        ...


class FeedbackCodec(Codec, Protocol):
    """A lossy codec that computes its own error while encoding (see ``ErrorFeedback``)."""

    def encode_feedback(self, xp: ModuleType, buf: Any, delta: Any = None) -> Encoded:
        """``buf`` compressed, like ``encode`` (but int8 rounds to nearest: the error is
        kept, so it needs no randomness to be unbiased over time); on return ``buf`` holds
        what the encoding dropped (``buf - decode(encoded)``), computed a block at a time.

        With ``delta`` (``buf``'s shape and dtype), ``buf + delta`` is compressed, as
        ``accumulate`` then ``encode_feedback``, in one pass where kernels run. ``buf``
        must be a writable C-contiguous float array. ``ValueError`` if it is not, if
        ``delta`` does not match it or holds NaN or inf, or if ``buf`` alone holds NaN or
        inf (in each case ``buf`` is unchanged); also if the codec refuses the sum (NaN in
        it, or int8 and sign values beyond float32's range), and then ``buf`` holds the sum.
        """
        ...


def decode(codec: Codec, encoded: Encoded) -> np.ndarray:
    """The dense update ``encoded`` stands for (a new array)."""
    out = np.zeros(encoded.shape, encoded.dtype)
    codec.decode_add(encoded, out)
    return out


def check_parts(codec: Codec, encoded: Encoded) -> None:
    """Validate an encoded tensor from the wire before it touches any state.

    Raises ``CodecError``, and nothing else whatever the input: code ``bad_header`` for a
    bad shape, dtype or params, ``bad_frames`` for buffers of the wrong number, dtype or
    length, holding NaN or inf, or (topk) indices out of range, unsorted or repeated.
    """
    specs = codec.part_specs(_checked_size(encoded), encoded.dtype, encoded.params)
    parts = encoded.parts
    if not isinstance(parts, tuple | list) or len(specs) != len(parts):
        count = len(parts) if isinstance(parts, tuple | list) else type(parts).__name__
        raise CodecError("bad_frames", f"codec {codec.name} needs {len(specs)} buffers for a "
                                       f"tensor, got {count}")
    for i, ((dtype, length), part) in enumerate(zip(specs, parts, strict=True)):
        if not (isinstance(part, np.ndarray) and part.ndim == 1
                and part.dtype == np.dtype(dtype) and part.size == length):
            got = (f"{part.size} x {part.dtype}" if isinstance(part, np.ndarray)
                   else type(part).__name__)
            raise CodecError("bad_frames", f"codec {codec.name} buffer {i} must be "
                                           f"{length} x {dtype}, got {got}")
        if part.dtype.kind == "f" and not all_finite(np, part):
            raise CodecError("bad_frames", f"codec {codec.name} buffer {i} holds NaN or inf")
    check = getattr(codec, "check", None)
    if check is not None:
        check(encoded)


def _checked_size(encoded: Encoded) -> int:
    shape, dtype = encoded.shape, encoded.dtype
    if not (isinstance(shape, tuple) and all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise CodecError("bad_header", f"a tensor shape must be a tuple of sizes >= 0, got "
                                       f"{str(shape)[:64]}")
    if not isinstance(dtype, str) or dtype not in DENSE_DTYPES:
        raise CodecError("bad_header", f"a compressed tensor's dtype must be one of "
                                       f"{', '.join(sorted(DENSE_DTYPES))}, got {dtype!r:.64}")
    return math.prod(shape)


def all_finite(xp: ModuleType, array: Any) -> bool:
    """Whether ``array`` holds no NaN or inf: min and max propagate both, and unlike
    ``isfinite(array).all()`` they need no temporary as big as the array."""
    if not array.size:
        return True
    return bool(xp.isfinite(array.min())) and bool(xp.isfinite(array.max()))


def require_finite(xp: ModuleType, array: Any, what: str = "update") -> None:
    """Lossy codecs refuse NaN and inf (``ValueError``): they would poison scales and
    residuals."""
    if not all_finite(xp, array):
        raise ValueError(f"the {what} contains NaN or inf; lossy codecs cannot encode it")


def accumulate(xp: ModuleType, buf: Any, delta: Any) -> None:
    """``buf += delta`` as error feedback adds: ``ValueError`` (``buf`` unchanged) if
    ``delta`` does not match ``buf`` or holds NaN or inf; a sum beyond the float range is
    clipped to it, so ``buf`` stays finite."""
    check_delta(buf, delta)
    require_finite(xp, delta)
    with np.errstate(over="ignore"):  # overflow is handled just below
        xp.add(buf, delta, out=buf)
    if not all_finite(xp, buf):
        # Two finite values can only sum to +-inf: saturate rather than poison every later
        # push (encoders refuse inf).
        limit = np.finfo(buf.dtype).max
        xp.clip(buf, -limit, limit, out=buf)


def check_delta(buf: Any, delta: Any) -> None:
    """``ValueError`` unless ``delta`` has ``buf``'s shape and dtype."""
    if delta.shape != buf.shape or delta.dtype != buf.dtype:
        raise ValueError(f"a delta of {delta.dtype}{list(delta.shape)} cannot be added to an "
                         f"error-feedback buffer of {buf.dtype}{list(buf.shape)}")


def flat(array: Any) -> Any:
    """A 1-D view (or copy, if not contiguous) of ``array``."""
    return array.reshape(-1)


def feedback_view(buf: Any) -> Any:
    """A 1-D view of an ``encode_feedback`` buffer, which the encoder writes through:
    ``ValueError`` unless ``buf`` is a writable, C-contiguous float array."""
    if not (buf.flags.c_contiguous and getattr(buf.flags, "writeable", True)
            and buf.dtype.kind == "f"):
        raise ValueError("error feedback needs a writable, C-contiguous float buffer")
    return buf.reshape(-1)


def feedback_inputs(buf: Any, delta: Any) -> tuple[Any, Any]:
    """``encode_feedback``'s arguments as 1-D views: the buffer it writes through (checked
    by ``feedback_view``) and the delta (None, or checked to match it)."""
    values = feedback_view(buf)
    if delta is not None:
        check_delta(buf, delta)
        delta = flat(delta)
    return values, delta


def out_view(out: np.ndarray) -> np.ndarray:
    """A 1-D view of a decode target; ``ValueError`` if it is not C-contiguous (a reshaped
    copy would take the update and drop it)."""
    if not out.flags.c_contiguous:
        raise ValueError("decode_add needs a C-contiguous output array")
    return out.reshape(-1)


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


def add_scaled(out: np.ndarray, update: np.ndarray | Compressed, scale: float = 1.0, *,
               base: np.ndarray | None = None) -> None:
    """``out += scale * update`` in place, exactly as a server applies a change (a replica
    that applies the same changes in the same order holds the same bits).

    With ``base`` (an array of ``out``'s shape and dtype, not overlapping it), writes
    ``out = base + scale * update`` instead, with the bits of copying ``base`` into ``out``
    first: for double-buffered tables. A dense product is rounded to ``out``'s dtype
    before the add, and made a block at a time. ``ValueError`` for mismatched arrays.
    """
    source = out if base is None or base is out else _checked_base(out, base)
    if isinstance(update, Compressed):
        if source is not out:
            np.copyto(out, source)
        update.add_into(out, scale)
    elif scale == 1.0:
        np.add(source, update, out=out)
    elif update.shape == out.shape and _flat_views(out, source, update):
        add_scaled_chunks(out.reshape(-1), source.reshape(-1), update.reshape(-1),
                          out.dtype.type(scale))
    else:  # broadcast or strided: numpy's own loop, one temporary
        np.add(source, np.multiply(update, scale, dtype=out.dtype), out=out)


def _checked_base(out: np.ndarray, base: np.ndarray) -> np.ndarray:
    if base.shape != out.shape or base.dtype != out.dtype:
        raise ValueError(f"base {base.dtype}{list(base.shape)} does not match the output "
                         f"{out.dtype}{list(out.shape)}")
    if np.may_share_memory(out, base):
        raise ValueError("base and the output overlap: pass two separate arrays")
    return base


def _flat_views(*arrays: np.ndarray) -> bool:
    """Whether each array reshapes to 1-D without a copy (writes must reach ``out``)."""
    return all(a.flags.c_contiguous for a in arrays)
