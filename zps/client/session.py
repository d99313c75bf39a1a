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
from zps.config import ClientConfig
from zps.errors import (
    ConfigError,
    ConnectionLost,
    RejectedError,
    ShapeMismatchError,
    ZpsError,
    remote_error,
)
from zps.protocol import DTYPES, Op, Reply, Request, TensorMeta

Arrays = dict[str, np.ndarray]

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

    def request(self, client_id: str, request_id: int) -> Request:
        return Request(self.op, client_id, request_id, self.tensors, self.names,
                       self.options, self.buffers)


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
        for message in messages:
            self._check_size(message)
        return messages

    def _check_size(self, message: Message) -> None:
        """Refuse, before sending, a message larger than its server accepts."""
        if message.server >= len(self.hello):
            return
        limit = self.hello[message.server].get("max_message_bytes")
        size = sum(t.nbytes for t in message.tensors)
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

    @staticmethod
    def sinks(message: Message, out: Arrays) -> tuple[np.ndarray, ...]:
        """Where each part of ``message``'s reply belongs in ``out`` (contiguous views)."""
        return tuple(out[p.table] if p.whole else out[p.table][p.start:p.stop]
                     for p in message.parts)

    @staticmethod
    def scatter(reply: Reply, message: Message, out: Arrays) -> None:
        """Copy each part a reply carries into its place in the output arrays."""
        got = reply.arrays()
        for part in message.parts:
            if part.whole:
                out[part.table][...] = got[part.key]
            else:
                out[part.table][part.start:part.stop] = got[part.key]


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


def _as_table_array(name: str, value: Any) -> np.ndarray:
    if not isinstance(name, str) or not name or any(c in name for c in RESERVED):
        raise ConfigError(f"table name {name!r} must be a non-empty string without {RESERVED!r}")
    array = np.ascontiguousarray(value)
    if array.dtype.name not in DTYPES:
        if not np.issubdtype(array.dtype, np.number):
            raise ShapeMismatchError("bad_dtype", f"table {name!r} must hold numbers")
        array = array.astype(np.float32)
    return array
