"""Who may do what, once CURVE has said who a peer is (sans-IO).

With CURVE on, the ZAP handler (``zps.server.zap``) names every connection's key as a user
id ``"ROLE SHA256:..."``: the role comes from the folder of ``--curve-authorized`` the key
was found in. ``check_access`` then decides per request: an observer only reads, a worker does
everything but replication, a standby key only replicates. ``scoped`` makes each client id
the key's own, so no key can push, or say ``bye``, as another key's client.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from zps.errors import ProtocolError
from zps.protocol import Op, Request

REPLICATION_OPS = frozenset({Op.SNAPSHOT, Op.SNAPSHOT_CHUNK, Op.ACK})
READ_OPS = frozenset({Op.HELLO, Op.PULL, Op.PULL_ROWS, Op.STATS, Op.TABLES, Op.HEARTBEAT,
                      Op.BYE, Op.WATCH})
ALLOWED: dict[str, frozenset[Op]] = {
    "observer": READ_OPS,
    "worker": frozenset(Op) - REPLICATION_OPS,
    "standby": frozenset({Op.HELLO, Op.HEARTBEAT, Op.BYE, Op.STATS, Op.TABLES,
                          *REPLICATION_OPS}),
}
# The roles a key of each kind may register as with hello.
HELLO_ROLES: dict[str, frozenset[str]] = {
    "observer": frozenset({"observer"}),
    "worker": frozenset({"worker", "observer"}),
    "standby": frozenset({"standby", "observer"}),  # (a --procs standby asks the group)
}


@dataclass(frozen=True, slots=True)
class Peer:
    """An authenticated connection: the role its key has and the key's fingerprint."""

    role: str
    key: str

    @classmethod
    def of(cls, user_id: str) -> Peer:
        role, _, key = user_id.partition(" ")
        return cls(role, key)

    def user_id(self) -> str:
        return f"{self.role} {self.key}"


def check_access(peer: Peer, request: Request) -> None:
    """Raise ``ProtocolError("forbidden")`` unless ``peer``'s role may send ``request``."""
    if request.op not in ALLOWED.get(peer.role, frozenset()):
        raise ProtocolError("forbidden", f"{_a(peer.role)} key may not send {request.op.value} "
                                         f"(key {peer.key})")
    if request.op is Op.HELLO:
        role = request.options.get("role", "worker")
        if not isinstance(role, str) or role not in HELLO_ROLES[peer.role]:
            raise ProtocolError("forbidden", f"{_a(peer.role)} key may not register as "
                                             f"{_a(str(role))} (key {peer.key})")


def scoped(request: Request, peer: Peer) -> Request:
    """``request`` with its client id prefixed by the key's fingerprint: what the server
    keeps per client (membership, request identity, ranks) is then per key as well, so a
    key cannot register, push, heartbeat or say ``bye`` as another key's client (clients
    sharing one key trust each other: give each worker a key of its own to keep them
    apart)."""
    return replace(request, client_id=f"{peer.key.removeprefix('SHA256:')}/{request.client_id}")


def _a(role: str) -> str:
    return f"an {role}" if role[:1] in "aeiou" else f"a {role}"
