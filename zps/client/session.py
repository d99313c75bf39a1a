"""What a client knows besides its sockets, and how it turns calls into messages (sans-IO).

Both ``AsyncClient`` and the blocking ``Client`` hold a ``Session``: the configuration, the
client id, the table layout learnt from ``init``, and the planning of each call into one
``Message`` per server and chunk. Only the way messages travel differs between the two.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from zps.client.placement import RESERVED, Layout, Part, TableSpec, plan
from zps.codecs import (
    Compressed,
    Encoded,
    ErrorFeedback,
    add_scaled,
    check_parts,
    make_codec,
)
from zps.config import ClientConfig
from zps.errors import (
    ConfigError,
    ConnectionLost,
    ProtocolError,
    RejectedError,
    ShapeMismatchError,
    ZpsError,
    remote_error,
)
from zps.protocol import DTYPES, EncodedMeta, Op, Reply, Request, TensorMeta

Arrays = dict[str, np.ndarray]

# Errors that mean "this shard is changing hands" to a client that knows a standby.
HANDOVER_ERRORS = ("not_primary", "shutting_down")

# Room left for the msgpack header when checking a message against the server's size limit.
HEADER_ALLOWANCE = 64 * 1024


@dataclass(frozen=True, slots=True)
class Message:
    """One request of a call: ``op`` to server number ``server`` for ``parts``."""

    server: int
    op: Op
    parts: tuple[Part, ...]
    tensors: tuple[TensorMeta, ...] = ()
    buffers: tuple[np.ndarray, ...] = ()
    names: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    encoded: tuple[EncodedMeta, ...] = ()

    def request(self, client_id: str, request_id: int) -> Request:
        return Request(self.op, client_id, request_id, self.tensors, self.names,
                       self.options, self.buffers, self.encoded)


def first_request_id() -> int:
    """Where a client's request ids start: random, so a worker restarted with the same
    client id never reuses ids still in the server's dedup window (and far below the
    heartbeat thread's ids, which start at 2**62)."""
    return secrets.randbits(48) + 1


def server_list(servers: str | Sequence[str]) -> list[str]:
    """Endpoints from a list or a comma-separated string."""
    found = [s.strip() for s in ([servers] if isinstance(servers, str) else servers)]
    found = [s.strip() for part in found for s in part.split(",") if s.strip()]
    if not found:
        raise ConfigError("no server address given; pass e.g. ['tcp://127.0.0.1:5570']")
    return found


class Session:
    """Configuration, identity and table layout of one client; plans its messages."""

    def __init__(self, servers: str | Sequence[str], config: ClientConfig | None,
                 overrides: Mapping[str, Any]) -> None:
        self.servers = server_list(servers)
        self.config = replace(config or ClientConfig(), **overrides)
        self.client_id = self.config.client_id or f"c-{uuid.uuid4().hex[:12]}"
        self.layout: Layout | None = None
        self.hello: list[dict[str, Any]] = []  # each server's answer to hello, in order
        try:
            self.codec = make_codec(self.config.codec)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.feedback = (ErrorFeedback(self.codec, np)
                         if self.config.error_feedback and not self.codec.lossless else None)
        # Delta pulls: the copy of each part this client holds, and at which version.
        try:
            self.pull_codec = (make_codec(self.config.pull_codec)
                               if self.config.pull_codec is not None else None)
        except ValueError as exc:
            raise ConfigError(f"pull_codec: {exc}") from None
        self.held: dict[str, tuple[int, np.ndarray]] = {}
        standbys = list(self.config.standbys)
        if standbys and len(standbys) != len(self.servers):
            raise ConfigError(f"give one standby per server ({len(self.servers)}), in the "
                              f"same order, '' for a server without one; got {len(standbys)}")
        self.standbys = standbys or [""] * len(self.servers)
        self._pulls = 0

    # ------------------------------------------------------------ tables

    def plan_init(self, tensors: Mapping[str, Any]) -> tuple[Layout, Arrays]:
        """The layout after adding ``tensors``, and the arrays to send (not yet committed)."""
        arrays = {name: _as_table_array(name, value) for name, value in tensors.items()}
        specs = {name: TableSpec(a.shape, a.dtype) for name, a in arrays.items()}
        known = self.layout.specs if self.layout else {}
        for name, spec in specs.items():
            if name in known and known[name] != spec:
                raise ShapeMismatchError(
                    "conflict",
                    f"init of {name!r} with {spec.dtype}{list(spec.shape)} does not match the "
                    f"table's {known[name].dtype}{list(known[name].shape)}",
                )
        return plan(specs, len(self.servers), self.config.chunk_bytes, self.layout), arrays

    def need_layout(self) -> Layout:
        if self.layout is None:
            raise ZpsError(
                "call init() first: the client learns the tables' shapes and where they live "
                "from init(), which every worker calls with the same initial arrays"
            )
        return self.layout

    def wanted(self, names: Iterable[str] | None) -> list[str]:
        """The tables a pull asks for (all by default), each checked to be known."""
        layout = self.need_layout()
        if names is None:
            return list(layout.specs)
        return [self._known(layout, n) for n in names]

    def deltas(self, deltas: Mapping[str, Any]) -> Arrays:
        """Deltas as contiguous arrays of each table's dtype, shapes checked."""
        layout = self.need_layout()
        arrays = {}
        for name, value in deltas.items():
            spec = layout.specs[self._known(layout, name)]
            array = np.ascontiguousarray(value, dtype=spec.dtype)
            if array.shape != spec.shape:
                raise ShapeMismatchError(
                    "shape_mismatch",
                    f"delta for {name!r} has shape {array.shape}, the table has {spec.shape}",
                )
            arrays[name] = array
        return arrays

    @staticmethod
    def _known(layout: Layout, name: str) -> str:
        if name not in layout.specs:
            known = ", ".join(sorted(layout.specs)) or "none"
            raise ZpsError(f"unknown table {name!r}; tables given to init(): {known}")
        return name

    # ------------------------------------------------------------ messages

    def messages(self, op: Op, layout: Layout, names: Sequence[str],
                 arrays: Mapping[str, np.ndarray] | None = None,
                 options: dict[str, Any] | None = None) -> list[Message]:
        """One message per server and chunk: parts batched up to ``chunk_bytes``."""
        messages = []
        first_to: set[int] = set()
        for group in self._group(list(layout.parts_of(list(names)))):
            extra = dict(options or {})
            if group[0].server in first_to:
                extra.pop("loss", None)  # one loss report per server and push
            first_to.add(group[0].server)
            messages.append(self._message(op, group, arrays, extra))
        if op in (Op.PUSH, Op.PUSH_PULL) and self.codec.name != "none":
            messages = [self._compress(m) for m in messages]
        if op in (Op.PULL, Op.PUSH_PULL) and self.pull_codec is not None:
            messages = self._ask_for_deltas(messages)
        for message in messages:
            self._check_size(message)
        return messages

    def _compress(self, message: Message) -> Message:
        """The same message with each part encoded by the push codec (error feedback kept
        per part, so a retry resends exactly what was encoded)."""
        metas: list[EncodedMeta] = []
        buffers: list[Any] = []
        for part, piece in zip(message.parts, message.buffers, strict=True):
            if self.feedback is not None:
                encoded = self.feedback.encode(part.key, piece)
            else:
                encoded = self.codec.encode(np, piece)
            metas.append(EncodedMeta(part.key, encoded.codec, encoded.params, encoded.dtype,
                                     encoded.shape,
                                     tuple((str(p.dtype), int(p.nbytes)) for p in encoded.parts)))
            buffers.extend(encoded.parts)
        return Message(message.server, message.op, message.parts, (), tuple(buffers),
                       message.names, message.options, tuple(metas))

    def _ask_for_deltas(self, messages: list[Message]) -> list[Message]:
        """Tell each server which version of its parts this client holds, so it answers
        with the change since then. With a lossy pull codec, every ``full_pull_every``-th
        pull asks for the whole value instead, which resets the accumulated error."""
        assert self.pull_codec is not None
        self._pulls += 1
        refresh = (not self.pull_codec.lossless
                   and self._pulls % max(1, self.config.full_pull_every) == 0)
        out = []
        for message in messages:
            have = {} if refresh else {
                p.key: self.held[p.key][0] for p in message.parts if p.key in self.held}
            options = {**message.options, "pull_codec": self.config.pull_codec}
            if have:
                options["have"] = have
            out.append(replace(message, options=options))
        return out

    def _check_size(self, message: Message) -> None:
        """Refuse, before sending, a message larger than its server accepts."""
        if message.server >= len(self.hello):
            return
        limit = self.hello[message.server].get("max_message_bytes")
        size = sum(int(b.nbytes) for b in message.buffers)
        if isinstance(limit, int) and size + HEADER_ALLOWANCE > limit:
            raise RejectedError(
                "too_large",
                f"a {message.op} of {size} bytes exceeds the server's limit of {limit} bytes; "
                "lower chunk_bytes (tables larger than it are split) or raise the server's "
                "--max-message-bytes",
                self.servers[message.server],
            )

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

    @staticmethod
    def _message(op: Op, parts: list[Part], arrays: Mapping[str, np.ndarray] | None,
                 options: dict[str, Any]) -> Message:
        if arrays is None:
            return Message(parts[0].server, op, tuple(parts), names=tuple(p.key for p in parts),
                           options=options)
        pieces = [arrays[p.table] if p.whole else arrays[p.table][p.start:p.stop] for p in parts]
        return Message(parts[0].server, op, tuple(parts),
                       tuple(TensorMeta.of(p.key, a) for p, a in zip(parts, pieces, strict=True)),
                       tuple(pieces), options=options)

    @staticmethod
    def push_options(loss: float | None, weight: float | None) -> dict[str, Any]:
        """Options a push carries: the worker's loss (rate rule ``loss``), its weight
        (aggregation ``weighted``, e.g. the batch size)."""
        options: dict[str, Any] = {}
        if loss is not None:
            options["loss"] = float(loss)
        if weight is not None:
            options["weight"] = float(weight)
        return options

    @staticmethod
    def init_options(optimizer: Mapping[str, Any] | None) -> dict[str, Any]:
        """Options an init carries: a server-side optimizer for the new tables."""
        return {"optimizer": dict(optimizer)} if optimizer else {}

    @staticmethod
    def outputs(layout: Layout, names: Iterable[str]) -> Arrays:
        """Fresh arrays for the values a call returns."""
        return {n: np.empty(layout.specs[n].shape, layout.specs[n].dtype) for n in names}

    def sinks(self, message: Message, out: Arrays) -> tuple[np.ndarray, ...]:
        """Where each part of ``message``'s reply belongs in ``out`` (contiguous views);
        none for delta pulls, whose replies go through ``scatter``."""
        if not out or self.pull_codec is not None:
            return ()
        return tuple(_place(out, p) for p in message.parts)

    def scatter(self, reply: Reply, message: Message, out: Arrays) -> None:
        """Put each part a reply carries into its place in the output arrays (for a delta
        pull, the held copy brought up to date with the change the reply carries)."""
        if self.pull_codec is None:
            got = reply.arrays()
            for part in message.parts:
                _place(out, part)[...] = got[part.key]
            return
        deltas = reply.info.get("delta", {})
        versions = reply.info.get("versions", {})
        dense = reply.dense_list()
        whole = {m.name: a for m, a in zip(reply.tensors, dense, strict=True)
                 if m.name not in deltas}
        for part in message.parts:
            version = versions.get(part.key)
            if not isinstance(version, int):
                raise ZpsError(f"the server's answer for {part.key!r} carries no version")
            if part.key in deltas:
                copy = self._apply_delta(part.key, deltas[part.key], version, dense, reply)
            else:
                copy = np.array(whole[part.key])
            self.held[part.key] = (version, copy)
            _place(out, part)[...] = copy

    def _apply_delta(self, key: str, delta: Any, version: int, dense: list[np.ndarray],
                     reply: Reply) -> np.ndarray:
        """The held copy of ``key`` with a delta reply's steps applied in order."""
        held = self.held.pop(key, None)
        try:
            base, plan = delta
            if held is not None and held[0] == version:
                return held[1]  # a resent pull whose first answer already came
            if held is None or held[0] != base:
                raise ZpsError(f"the server sent the change of {key!r} since version {base}, "
                               f"but this client holds {held[0] if held else 'nothing'}; "
                               "pull again (one pull at a time per client)")
            encoded = reply.encoded_list()
            copy = held[1]
            for kind, index, scale in plan:
                if kind == "d":
                    add_scaled(copy, dense[index], float(scale))
                else:
                    meta, parts = encoded[index]
                    enc = Encoded(meta.codec, meta.shape, meta.dtype, parts, meta.params)
                    codec = make_codec(meta.codec)
                    check_parts(codec, enc)
                    add_scaled(copy, Compressed(codec, enc), float(scale))
        except (TypeError, ValueError, IndexError, ProtocolError) as exc:
            raise ZpsError(f"malformed delta for {key!r} from the server: {exc}") from None
        return copy


class SessionProperties:
    """What both clients expose about their session."""

    _session: Session

    @property
    def servers(self) -> list[str]:
        """The server endpoints, in the order given."""
        return self._session.servers

    @property
    def config(self) -> ClientConfig:
        return self._session.config

    @property
    def client_id(self) -> str:
        """This client's id on the servers (also its worker id)."""
        return self._session.client_id

    @property
    def layout(self) -> Layout | None:
        """Where each table lives, once ``init`` was called."""
        return self._session.layout

    @property
    def server_info(self) -> dict[str, Any]:
        """What the first server said in answer to hello (mode, limits, optimizer...)."""
        return dict(self._session.hello[0]) if self._session.hello else {}

    @property
    def mode(self) -> str:
        """The consistency mode the servers run (``sync`` or ``async``)."""
        return str(self._session.hello[0].get("mode", "")) if self._session.hello else ""


def check_reply(reply: Reply, op: Op, server_id: str | None, address: str) -> Reply:
    """``reply`` if it succeeded; else the matching ``RemoteError`` or ``ConnectionLost``."""
    sid = reply.info.get("sid")
    if server_id is not None and sid is not None and sid != server_id:
        raise ConnectionLost(
            f"the zps server at {address} restarted (instance {server_id} is now "
            f"{sid}) and lost its tables; restart the job, or standbys will recover it"
        )
    if reply.error is not None:
        code, message = reply.error
        raise remote_error(code, f"{op} failed: {message}", address)
    return reply


def unreachable_message(address: str, op: Op, attempts: int, timeout: float) -> str:
    if op == Op.HELLO:
        return (f"could not reach a zps server at {address} within {timeout:g} s; start one "
                f"with `zps-server --bind {address}` or fix the address")
    return (f"no answer from the zps server at {address} to {op} after {attempts} tries of "
            f"{timeout:g} s; check that zps-server is running there and reachable")


def _place(out: Arrays, part: Part) -> np.ndarray:
    """The view of ``out`` that ``part`` fills."""
    return out[part.table] if part.whole else out[part.table][part.start:part.stop]


def _as_table_array(name: str, value: Any) -> np.ndarray:
    if not isinstance(name, str) or not name or any(c in name for c in RESERVED):
        raise ConfigError(f"table name {name!r} must be a non-empty string without {RESERVED!r}")
    array = np.ascontiguousarray(value)
    if array.dtype.name not in DTYPES:
        if not np.issubdtype(array.dtype, np.number):
            raise ShapeMismatchError("bad_dtype", f"table {name!r} must hold numbers")
        array = array.astype(np.float32)
    return array
