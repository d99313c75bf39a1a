"""Frozen configuration objects, with every bound and timeout named in one place.

The CLI builds these from flags, ``ZPS_*`` environment variables and TOML files; library
users build them directly. Nothing below ``zps.cli`` reads the environment.
"""

from __future__ import annotations

import math
import numbers
import operator
from dataclasses import dataclass, field
from typing import Any, Literal

from zps.errors import ConfigError
from zps.protocol import Limits

MODES: tuple[str, ...] = ("sync", "async", "ssp:K")


def parse_mode(text: str) -> tuple[str, int]:
    """``sync`` / ``async`` / ``ssp:K`` -> (kind, K). Raises ``ValueError`` when malformed."""
    kind, _, bound = text.partition(":")
    if kind in ("sync", "async") and not bound:
        return kind, 0
    if kind == "ssp" and bound.isdigit():
        return kind, int(bound)
    raise ValueError(f"mode {text!r}: use sync, async or ssp:K with K >= 0 (e.g. ssp:2)")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything a ``zps-server`` process needs to know."""

    bind: str = "tcp://127.0.0.1:5570"
    mode: str = "sync"  # sync | async | ssp:K
    workers: int = 1  # the first sync round waits until this many workers registered
    quorum: int = 0  # sync: a round closes after the first K pushes (0: all live workers)
    late: str = "drop"  # sync: a push for a closed round is dropped, or folded into the next
    round_timeout: float = 0.0  # sync: close a round after this many seconds (0: never)
    aggregate: str = "mean"  # sync: mean | weighted | median | trimmed:B
    lr_rule: str = "constant"  # async/ssp: constant | staleness | loss
    lr_scale: float = 1.0  # async/ssp: theta += eta_i * delta, eta_i = lr_scale by default
    optimizer: dict[str, Any] | None = None  # for tables whose init names none
    heartbeat_interval: float = 1.0  # seconds between the heartbeats clients send
    liveness: int = 10  # a worker silent for interval x liveness is declared dead
    log_every_rounds: int = 100  # one log line per this many closed rounds
    limits: Limits = field(default_factory=Limits)
    metrics_bind: str = ""  # HOST:PORT for Prometheus /metrics ("": none)
    sndhwm: int = 10_000
    rcvhwm: int = 10_000
    log_entries: int = 1024
    log_bytes: int = 256 << 20
    # Replication: a primary publishes every change on a PUB socket (pub_bind; by default
    # the host of bind on a free port); a server started with standby_of mirrors that
    # primary and takes over when its heartbeats (every repl_interval) stop for
    # repl_interval x repl_liveness. With replication "sync" and a standby attached, an
    # update is acknowledged only once the standby holds it.
    standby_of: str = ""
    replication: Literal["async", "sync"] = "sync"
    pub_bind: str = ""
    repl_interval: float = 0.1
    repl_liveness: int = 5
    inject_pub_drops: int = 0  # testing: the publisher skips every Nth change
    # Checkpoints: written atomically to checkpoint_dir every checkpoint_every seconds
    # (0: only on shutdown) or every checkpoint_rounds sync rounds; restore resumes one.
    checkpoint_dir: str = ""
    checkpoint_every: float = 0.0
    checkpoint_rounds: int = 0
    restore: str = ""
    # CURVE (off unless curve_key is set): this server's key pair file, the folder of the
    # public keys allowed in, by role (workers/, standbys/, observers/), and, for a
    # standby, its primary's public key (default: the public half of curve_key).
    curve_key: str = ""
    curve_authorized: str = ""
    curve_server_key: str = ""
    # zps-server --procs N: the addresses of every process of this host's group, in order
    # (hello says them, and clients given one place their tables over all).
    group: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Timeouts, retries and bounds of a client (embedded or inside ``zps-worker``)."""

    timeout: float = 30.0  # seconds a request may take before it is retried
    retries: int = 2  # retries per request after a timeout (same request id: applied once)
    connect_timeout: float = 10.0  # seconds to wait for a server's hello answer
    chunk_bytes: int = 4 << 20  # tables larger than this travel as row-range parts
    max_inflight: int = 16  # requests in flight per client across all servers
    # Small requests ready together for one server (an AsyncClient's calls of one loop turn,
    # those max_inflight held back) travel as one message, to servers that take batches.
    coalesce: bool = True
    heartbeat_interval: float = 1.0  # seconds between heartbeats (0 disables them)
    role: Literal["worker", "observer"] = "worker"  # observers never count in sync rounds
    codec: str = "none"  # how pushes travel: none, fp16, int8[:BLOCK], sign[:BLOCK], topk[:RATIO]
    error_feedback: bool = True  # lossy codecs: carry what compression dropped to the next push
    # Delta pulls: None pulls whole tables; a codec name asks for the change since the version
    # held, sent with that codec ("none" is exact; a lossy one is reset by a full pull every
    # full_pull_every pulls).
    pull_codec: str | None = None
    full_pull_every: int = 20
    client_id: str | None = None  # stable id for a worker that restarts; random by default
    rank: int | None = None  # a worker's rank (data shard); None: the first server assigns one
    # Hot standbys, one per server in the same order ("" for a server without one): the
    # client switches to a standby when it takes over from its primary.
    standbys: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)  # bounds on the replies it accepts
    # CURVE: the servers' public key and this client's key pair (paths of the files
    # `zps keygen` writes, or Z85 keys); both or neither.
    curve_server_key: str | bytes | None = None
    curve_key: str | bytes | None = None

    def __post_init__(self) -> None:
        for name, low, strict, integral in _CLIENT_BOUNDS:
            value = _number(getattr(self, name), integral)
            if value is None or value < low or (strict and value == low):
                what = "an int" if integral else "a finite number"
                raise ConfigError(f"{name} must be {what} {'>' if strict else '>='} {low}"
                                  f"{' (at most 2**63-1)' if integral else ''}, got "
                                  f"{getattr(self, name)!r}")
            object.__setattr__(self, name, value)  # (a NumPy number as a plain one)


def _number(value: Any, integral: bool) -> int | float | None:
    """``value`` as a plain int (``integral``: at most 2**63-1) or finite float, or None."""
    if isinstance(value, bool):
        return None
    if integral:
        try:
            whole = operator.index(value)
        except TypeError:
            return None
        return whole if whole <= (1 << 63) - 1 else None
    if not isinstance(value, numbers.Real):
        return None
    try:
        real = float(value)
    except OverflowError:
        return None
    return (int(value) if isinstance(value, numbers.Integral) else real) \
        if math.isfinite(real) else None


# ClientConfig's numbers: (field, bound, whether the bound itself is refused, integral).
_CLIENT_BOUNDS: tuple[tuple[str, int, bool, bool], ...] = (
    ("timeout", 0, True, False), ("connect_timeout", 0, True, False),
    ("heartbeat_interval", 0, False, False), ("retries", 0, False, True),
    ("chunk_bytes", 1, False, True), ("max_inflight", 1, False, True))
