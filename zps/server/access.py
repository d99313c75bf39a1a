"""Who may do what, once CURVE has said who a peer is (sans-IO).

With CURVE on, the ZAP handler (``zps.server.zap``) names every connection's key as a user
id ``"ROLE SHA256:..."``: the role comes from the folder of ``--curve-authorized`` the key
was found in. ``check_access`` then decides per request: an observer only reads, a worker does
everything but replication, a standby key only replicates. A client id belongs to the key
that registered it, so no key can push, or say ``bye``, as another's worker.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    "standby": frozenset({"standby"}),
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


def check_access(peer: Peer, request: Request, owner: str | None) -> None:
    """Raise ``ProtocolError("forbidden")`` unless ``peer`` may send ``request``; ``owner``
    is the key that registered the request's client id (None if nobody did)."""
    if request.op not in ALLOWED.get(peer.role, frozenset()):
        raise ProtocolError("forbidden", f"{_a(peer.role)} key may not send {request.op.value} "
                                         f"(key {peer.key})")
    if request.op is Op.HELLO:
        role = request.options.get("role", "worker")
        if role not in HELLO_ROLES[peer.role]:
            raise ProtocolError("forbidden", f"{_a(peer.role)} key may not register as {_a(role)} "
                                             f"(key {peer.key})")
    if owner is not None and owner != peer.key:
        raise ProtocolError("forbidden", f"client id {request.client_id} belongs to another "
                                         f"key; key {peer.key} may not act for it")


def _a(role: str) -> str:
    return f"an {role}" if role[:1] in "aeiou" else f"a {role}"
