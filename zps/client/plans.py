"""How a client's calls become messages (sans-IO): placement, batching, compression.

A call names tables; the layout says which server holds which row range of each; the
planner groups the parts by server into messages of at most ``chunk_bytes``, compresses
pushes with the codec (error feedback kept per part, so a resend carries exactly what was
encoded once), and checks each message against its server's size limit before anything is
sent. Replies are put back into the caller's arrays part by part.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import array_api_compat
import numpy as np

from zps.client.placement import RESERVED, Layout, Part, TableSpec, plan
from zps.codecs import Codec, CodecError, ErrorFeedback, arrayapi, make_codec
from zps.config import ClientConfig
from zps.devices import HostCopies, as_device_array, dtype_name, host_copy, namespace
from zps.errors import (
    ConfigError,
    RejectedError,
    ShapeMismatchError,
    UnknownTableError,
    ZpsError,
)
from zps.protocol import DTYPES, EncodedMeta, Op, Reply, TensorMeta

Arrays = dict[str, np.ndarray]

# Room left for the msgpack header when checking a message against the server's size limit
# (a quarter of a limit below 256 KiB).
HEADER_ALLOWANCE = 64 * 1024


def header_allowance(limit: int) -> int:
    """The room for a request's header within a server's ``limit``."""
    return min(HEADER_ALLOWANCE, limit // 4)
GROUP_CACHE = 256  # sets of table names whose message grouping is kept


@dataclass(frozen=True, slots=True)
class Message:
    """One request of a call: ``op`` to server number ``server`` for ``parts``."""

    server: int
    op: Op
    parts: tuple[Part, ...]
    tensors: tuple[TensorMeta, ...] = ()
    buffers: tuple[Any, ...] = ()
    names: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    encoded: tuple[EncodedMeta, ...] = ()


def server_list(servers: str | Sequence[str]) -> list[str]:
    """Endpoints from a list or a comma-separated string."""
    found = [s.strip() for s in ([servers] if isinstance(servers, str) else servers)]
    found = [s.strip() for part in found for s in part.split(",") if s.strip()]
    if not found:
        raise ConfigError("no server address given; pass e.g. ['tcp://127.0.0.1:5570']")
    return found


class Planner:
    """The layout of a client's tables and the planning of its messages."""

    def __init__(self, config: ClientConfig, servers: int) -> None:
        self.config = config
        self.servers = servers
        self.layout: Layout | None = None
        self.limits: list[int | None] = [None] * servers  # each server's max message size
        self._group_cache: dict[tuple[str, ...], tuple[Layout, list[Any]]] = {}
        try:
            self.codec = make_codec(config.codec)
            self.pull_codec = (make_codec(config.pull_codec)
                               if config.pull_codec is not None else None)
        except CodecError as exc:
            raise ConfigError(str(exc)) from None
        self.feedback = (ErrorFeedback(self.codec, np)
                         if config.error_feedback and not self.codec.lossless else None)
        # Tables pushed through another codec than the client's (``set_codec``).
        self._codecs: dict[str, tuple[Codec, ErrorFeedback | None]] = {}
        # Residuals of pushes from device arrays, by (set_codec table or "", module).
        self._device_feedback: dict[tuple[str, str], ErrorFeedback] = {}

    def set_codec(self, names: Iterable[str], spec: str, error_feedback: bool = True) -> None:
        """Push the tables ``names`` through codec ``spec`` (each with its own error
        feedback) instead of the client's; ``ConfigError`` for a bad spec."""
        names = list(names)
        try:
            codec = make_codec(spec)
        except CodecError as exc:
            raise ConfigError(str(exc)) from None
        feedback = ErrorFeedback(codec, np) if error_feedback and not codec.lossless else None
        for name in names:
            self._codecs[name] = (codec, feedback)
        for key in [k for k in self._device_feedback if k[0] in names]:
            del self._device_feedback[key]  # device residuals of the old codec

    # ------------------------------------------------------------ tables

    def plan_init(self, tensors: Mapping[str, Any]) -> tuple[Layout, Arrays]:
        """The layout after adding ``tensors``, and the arrays to send (not yet committed)."""
        arrays = {name: table_array(name, value) for name, value in tensors.items()}
        specs = {name: TableSpec(a.shape, a.dtype) for name, a in arrays.items()}
        known = self.layout.specs if self.layout else {}
        for name, spec in specs.items():
            if name in known and known[name] != spec:
                raise ShapeMismatchError(
                    "conflict",
                    f"init of {name!r} with {spec.dtype}{list(spec.shape)} does not match the "
                    f"table's {known[name].dtype}{list(known[name].shape)}")
        return plan(specs, self.servers, self.config.chunk_bytes, self.layout), arrays

    def adopt(self, found: Layout) -> None:
        """Take the tables of ``found`` (the servers' own description) that this client
        has not placed itself."""
        if self.layout is None:
            self.layout = found
            return
        fresh = [n for n in found.specs if n not in self.layout.specs]
        if fresh:
            self.layout = Layout({**self.layout.specs, **{n: found.specs[n] for n in fresh}},
                                 {**self.layout.parts, **{n: found.parts[n] for n in fresh}},
                                 self.layout.servers)

    def need_layout(self) -> Layout:
        if self.layout is None:
            raise UnknownTableError(
                "unknown_table",
                "call init() first: the client learns the tables' shapes and where they live "
                "from init(), which every worker calls with the same initial arrays (or pull, "
                "which asks the servers)")
        return self.layout

    def wanted(self, names: Iterable[str] | None) -> list[str]:
        """The tables a pull asks for (all by default), each checked to be known."""
        layout = self.need_layout()
        if names is None:
            return list(layout.specs)
        if isinstance(names, str):
            names = [names]
        return [_known(layout, n) for n in names]

    def deltas(self, deltas: Mapping[str, Any]) -> Arrays:
        """Deltas as contiguous arrays of each table's dtype, shapes checked."""
        layout = self.need_layout()
        arrays = {}
        for name, value in deltas.items():
            spec = layout.specs[_known(layout, name)]
            xp = namespace(value)
            array = _contiguous(np.asarray(value, dtype=spec.dtype)) if xp is None else \
                device_array(xp, value, spec.dtype)
            if tuple(array.shape) != spec.shape:
                raise ShapeMismatchError(
                    "shape_mismatch",
                    f"delta for {name!r} has shape {array.shape}, the table has {spec.shape}")
            arrays[name] = array
        return arrays

    # ------------------------------------------------------------ messages

    def messages(self, op: Op, layout: Layout, names: Sequence[str],
                 arrays: Mapping[str, np.ndarray] | None = None,
                 options: dict[str, Any] | None = None) -> list[Message]:
        """One message per server and chunk: parts batched up to ``chunk_bytes``."""
        messages = []
        first_to: set[int] = set()
        for group, metas in self._groups(layout, names):
            extra = dict(options) if options else {}
            if group[0].server in first_to:
                extra.pop("loss", None)  # one loss report per server and push
            first_to.add(group[0].server)
            messages.append(_message(op, group, arrays, extra, metas))
        if op in (Op.PUSH, Op.PUSH_PULL):
            messages = [self._compress(m) if self._compressed(m) else m for m in messages]
        for message in messages:
            self._check_size(message)
        return messages

    def _groups(self, layout: Layout, names: Sequence[str]) -> list[tuple[tuple[Part, ...],
                                                                          tuple[TensorMeta, ...]]]:
        """The parts of ``names`` grouped into messages, with each part's tensor header:
        fixed by the layout, so worked out once per set of names (a training loop pushes
        the same tables every step)."""
        key = tuple(names)
        cached = self._group_cache.get(key)
        if cached is not None and cached[0] is layout:
            return cached[1]
        if len(self._group_cache) >= GROUP_CACHE:
            self._group_cache.clear()
        groups = [(tuple(group), tuple(_part_meta(layout, p) for p in group))
                  for group in self._group(list(layout.parts_of(list(names))))]
        self._group_cache[key] = (layout, groups)
        return groups

    def _codec_of(self, table: str, xp: ModuleType | None = None,
                  ) -> tuple[Codec, ErrorFeedback | None]:
        codec, feedback = self._codecs.get(table) or (self.codec, self.feedback)
        if xp is None or feedback is None:
            return codec, feedback
        # On a device: a residual of its own, kept on that device.
        key = (table if table in self._codecs else "", xp.__name__)
        if key not in self._device_feedback:
            self._device_feedback[key] = ErrorFeedback(codec, xp)
        return codec, self._device_feedback[key]

    def _compressed(self, message: Message) -> bool:
        if any(namespace(b) is not None for b in message.buffers):
            return True  # device arrays are encoded where they are, "none" included
        if not self._codecs:
            return self.codec.name != "none"
        return any(self._codec_of(p.table)[0].name != "none" for p in message.parts)

    def _compress(self, message: Message) -> Message:
        """The same message with each part encoded by its table's push codec (a device
        array on its device, with only the encoded parts then copied to the host)."""
        metas: list[EncodedMeta] = []
        buffers: list[Any] = []
        copies: HostCopies | None = None
        for part, piece in zip(message.parts, message.buffers, strict=True):
            xp = namespace(piece)
            codec, feedback = self._codec_of(part.table, xp)
            if feedback is not None:
                encoded = feedback.encode(part.key, piece)
            else:
                encoded = codec.encode(np, piece) if xp is None else arrayapi.encode(codec, piece)
            parts = encoded.parts
            if xp is not None:  # copied while the next part is encoded
                copies = copies or HostCopies(xp)
                parts = tuple(copies.add(p) for p in parts)
            metas.append(EncodedMeta(part.key, encoded.codec, encoded.params, encoded.dtype,
                                     encoded.shape,
                                     tuple((str(p.dtype), int(p.nbytes)) for p in parts)))
            buffers.extend(parts)
        if copies is not None:
            copies.wait()
        return Message(message.server, message.op, message.parts, (), tuple(buffers),
                       message.names, message.options, tuple(metas))

    def _check_size(self, message: Message) -> None:
        """Refuse, before sending, a message larger than its server accepts."""
        limit = self.limits[message.server]
        size = sum(int(b.nbytes) for b in message.buffers)
        if limit is not None and size + header_allowance(limit) > limit:
            raise RejectedError(
                "too_large",
                f"a {message.op} of {size} bytes exceeds the server's limit of {limit} bytes; "
                "lower chunk_bytes (tables larger than it are split) or raise the server's "
                "--max-message-bytes")

    def _group(self, parts: list[Part]) -> list[list[Part]]:
        groups: list[list[Part]] = []
        open_group: dict[int, tuple[list[Part], int]] = {}
        for part in parts:
            group, size = open_group.get(part.server, ([], 0))
            if group and size + part.nbytes > self.config.chunk_bytes:
                groups.append(group)
                group, size = [], 0
            group.append(part)
            open_group[part.server] = (group, size + part.nbytes)
        groups.extend(g for g, _ in open_group.values() if g)
        return groups


    def outputs(self, names: Sequence[str], out: Mapping[str, np.ndarray] | None) -> Arrays:
        """The arrays a call's replies fill: those of ``out`` (checked: each the table's
        shape and dtype, C-contiguous and writable) and fresh ones for the other tables."""
        layout = self.need_layout()
        arrays = outputs(layout, [n for n in names if out is None or n not in out])
        for name, array in (out or {}).items():
            if name not in names:
                raise ConfigError(f"out= has {name!r}, which this call does not return")
            spec = layout.specs[name]
            if not isinstance(array, np.ndarray) or array.shape != spec.shape \
                    or array.dtype != spec.dtype or not array.flags.c_contiguous \
                    or not array.flags.writeable:
                got = (f"{'' if array.flags.c_contiguous else 'non-contiguous '}"
                       f"{'' if array.flags.writeable else 'read-only '}"
                       f"{array.dtype}{list(array.shape)}" if isinstance(array, np.ndarray)
                       else type(array).__name__)
                raise ShapeMismatchError(
                    "shape_mismatch",
                    f"out[{name!r}] must be a writable C-contiguous {spec.dtype} array of "
                    f"shape {list(spec.shape)}, got {got}")
            arrays[name] = array
        return {n: arrays[n] for n in names}


def outputs(layout: Layout, names: Iterable[str]) -> Arrays:
    """Fresh arrays for the values a call returns."""
    return {n: np.empty(layout.specs[n].shape, layout.specs[n].dtype) for n in names}


def place(out: Arrays, part: Part) -> np.ndarray:
    """The view of ``out`` that ``part`` fills."""
    return out[part.table] if part.whole else out[part.table][part.start:part.stop]


def scatter(reply: Reply, message: Message, out: Arrays) -> None:
    """Copy the values ``reply`` (to ``message``) carries into their places in ``out``."""
    got = reply.arrays()
    for part in message.parts:
        value = got.get(part.key)
        view = place(out, part)
        if value is None or value.shape != view.shape:
            raise ZpsError(f"the server's answer for {part.key!r} does not match the "
                           "table's layout")
        view[...] = value


def push_options(loss: float | None, weight: float | None) -> dict[str, Any]:
    """Options a push carries: the worker's loss (rate rule ``loss``), its weight
    (aggregation ``weighted``, e.g. the batch size)."""
    options: dict[str, Any] = {}
    if loss is not None:
        options["loss"] = float(loss)
    if weight is not None:
        options["weight"] = float(weight)
    return options


def table_array(name: str, value: Any) -> np.ndarray:
    """An init value as a table array: float32 and float64 are kept; other real numbers
    (integers, float16) become float32; anything else is refused. A 0-d array stays 0-d."""
    if not isinstance(name, str) or not name or any(c in name for c in RESERVED):
        raise ConfigError(f"table name {name!r} must be a non-empty string without {RESERVED!r}")
    array = np.asarray(host_copy(value))
    if array.dtype.name not in DTYPES:
        if array.dtype.kind not in "iuf":
            raise ShapeMismatchError("bad_dtype", f"table {name!r} must hold real numbers, "
                                                  f"not {array.dtype}")
        array = array.astype(np.float32)
    return _contiguous(array)


def device_array(xp: ModuleType, value: Any, dtype: np.dtype) -> Any:
    """A delta on its device, as the table's dtype (a CUDA torch tensor taken as CuPy)."""
    array = as_device_array(value, xp)
    if dtype_name(array) != dtype.name:
        standard = array_api_compat.array_namespace(array)  # (cupy.astype: CuPy 14+ only)
        array = standard.astype(array, getattr(standard, dtype.name))
    return array


def _contiguous(array: np.ndarray) -> np.ndarray:
    # np.ascontiguousarray would turn a 0-d array into shape (1,)
    return array if array.flags.c_contiguous else np.ascontiguousarray(array)


def _known(layout: Layout, name: str) -> str:
    if name not in layout.specs:
        known = ", ".join(sorted(layout.specs)) or "none"
        raise UnknownTableError("unknown_table",
                                f"unknown table {name!r}; tables given to init(): {known}")
    return name


def _message(op: Op, parts: tuple[Part, ...], arrays: Mapping[str, np.ndarray] | None,
             options: dict[str, Any], metas: tuple[TensorMeta, ...]) -> Message:
    if arrays is None:
        return Message(parts[0].server, op, parts, names=tuple(p.key for p in parts),
                       options=options)
    pieces = tuple(arrays[p.table] if p.whole else arrays[p.table][p.start:p.stop, ...]
                   for p in parts)
    return Message(parts[0].server, op, parts, metas, pieces, options=options)


def _part_meta(layout: Layout, part: Part) -> TensorMeta:
    """The header of ``part``'s array (its dtype and row range of the table's shape)."""
    spec = layout.specs[part.table]
    shape = spec.shape if part.whole else (part.stop - part.start, *spec.shape[1:])
    return TensorMeta(part.key, spec.dtype.name, shape, part.nbytes)
