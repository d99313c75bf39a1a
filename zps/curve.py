"""ZeroMQ CURVE keys: loading them, naming them, and the socket options that use them.

Keys live in ``zmq.auth`` certificate files: ``NAME.key`` holds a public key,
``NAME.key_secret`` the pair. A server's sockets are CURVE servers with its secret key; a
client (worker, observer, standby) needs the server's public key and a pair of its own,
whose public half the server must list under ``--curve-authorized DIR/ROLE/``. Keys are
named in logs by a short fingerprint of the public key, never by the secret.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
import zmq.utils.monitor

from zps.errors import ConfigError

ROLE_FOLDERS: dict[str, str] = {"workers": "worker", "standbys": "standby",
                                "observers": "observer"}
KeySource = str | bytes | os.PathLike[str]


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A CURVE key pair in Z85 (40 bytes each)."""

    public: bytes
    secret: bytes


def fingerprint(public: bytes) -> str:
    """A short, stable name for a public key (what logs and ``zps keygen`` print)."""
    return "SHA256:" + hashlib.sha256(public).hexdigest()[:16]


def _z85_key(source: KeySource) -> bytes | None:
    """``source`` as a key if it is 40 characters and no file of that name exists (a
    string ending in .key or .key_secret is always a path)."""
    if isinstance(source, str) and source.endswith((".key", ".key_secret")):
        return None
    if isinstance(source, bytes | str) and len(source) == 40 and not os.path.exists(source):
        return source.encode() if isinstance(source, str) else source
    return None


def load_public(source: KeySource, what: str) -> bytes:
    """A public key from a certificate file (``.key`` or ``.key_secret``) or given as its
    40 Z85 characters; ``ConfigError`` naming ``what`` if it is neither."""
    key = _z85_key(source)
    if key is not None:
        _check_z85(key, what)
        return key
    public, _ = _read(source, what)
    return public


def load_pair(source: KeySource, what: str) -> KeyPair:
    """A key pair from a ``.key_secret`` file, or from the secret key's 40 Z85 characters;
    ``ConfigError`` if the file holds no secret."""
    given = _z85_key(source)
    if given is not None:
        _check_z85(given, what)
        try:
            return KeyPair(zmq.curve_public(given), given)
        except Exception:
            raise ConfigError(f"{what} is not a CURVE secret key") from None
    public, secret = _read(source, what)
    if secret is None:
        raise ConfigError(f"{what} {os.fsdecode(source)!r} holds only a public key; give the "
                          "matching .key_secret file (written by `zps keygen`)")
    return KeyPair(public, secret)


def _read(source: KeySource, what: str) -> tuple[bytes, bytes | None]:
    path = os.fsdecode(source)
    try:
        public, secret = zmq.auth.load_certificate(path)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path!r}: {exc.strerror or exc}") from None
    except Exception:  # zmq.auth's parser raises ValueError, IndexError... on bad files
        raise ConfigError(f"{what} {path!r} is not a CURVE key file (write one with "
                          "`zps keygen DIR`)") from None
    _check_z85(public, f"{what} {path!r}")
    if secret is not None:
        _check_z85(secret, f"{what} {path!r}")
    return public, secret


def _check_z85(key: bytes, what: str) -> None:
    try:
        if len(zmq.utils.z85.decode(key)) == 32:
            return
    except Exception:  # z85 raises struct.error, ValueError, KeyError... for bad input
        pass
    raise ConfigError(f"{what} is not a CURVE key (40 Z85 characters)")


def client_options(server_key: bytes, pair: KeyPair) -> dict[str, int | bytes]:
    """``open_socket`` options of a CURVE client talking to the server with ``server_key``."""
    return {"CURVE_SERVERKEY": server_key, "CURVE_PUBLICKEY": pair.public,
            "CURVE_SECRETKEY": pair.secret}


def client_curve(server_key: KeySource | None, key: KeySource | None,
                 ) -> dict[str, int | bytes]:
    """Socket options for a client configured with ``curve_server_key=``/``curve_key=``
    (both or neither; empty without CURVE)."""
    if not server_key and not key:
        return {}
    if not server_key or not key:
        given, missing = ("curve_key", "curve_server_key") if key else \
            ("curve_server_key", "curve_key")
        raise ConfigError(f"{given} needs {missing} too: CURVE takes the server's public key "
                          "(curve_server_key) and this client's own key pair (curve_key)")
    return client_options(load_public(server_key, "curve_server_key"),
                          load_pair(key, "curve_key"))


def make_curve_server(sock: zmq.Socket, pair: KeyPair, domain: str) -> None:
    """Make ``sock`` (before it binds) a CURVE server whose peers ZAP checks in ``domain``."""
    enforce = getattr(zmq, "ZAP_ENFORCE_DOMAIN", None)
    if enforce is not None:  # no handler bound: refuse, never admit everyone
        with contextlib.suppress(zmq.ZMQError):
            sock.setsockopt(enforce, 1)
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, pair.secret)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, pair.public)
    sock.setsockopt(zmq.ZAP_DOMAIN, domain.encode())


def check_new(folder: Path, name: str) -> None:
    """``ConfigError`` if ``name``'s key files exist in ``folder`` (never overwritten)."""
    for path in (folder / f"{name}.key", folder / f"{name}.key_secret"):
        if path.exists():
            raise ConfigError(f"{path} exists; keys are never overwritten (remove it, or "
                              "pick another --name)")


def write_pair(folder: Path, name: str) -> tuple[Path, Path]:
    """Write ``folder/name.key`` and ``folder/name.key_secret`` (the secret readable by
    its owner only, from the start); ``ConfigError`` if they exist."""
    check_new(folder, name)
    folder.mkdir(parents=True, exist_ok=True)
    mask = os.umask(0o077)
    try:
        made_public, made_secret = zmq.auth.create_certificates(str(folder), name)
    finally:
        os.umask(mask)
    os.chmod(made_public, 0o644)
    return Path(made_public), Path(made_secret)


HANDSHAKE_FAILURES = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                      | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


class HandshakeWatch:
    """Watches sockets' handshakes while a client connects, so that a server that never
    answers because of CURVE (a refused key, a mismatch) is named as the reason."""

    def __init__(self, sockets: dict[str, zmq.Socket], options: dict[str, int | bytes]) -> None:
        self._public = options.get("CURVE_PUBLICKEY")
        self._monitors = {address: (sock, sock.get_monitor_socket(HANDSHAKE_FAILURES))
                          for address, sock in sockets.items()}

    def explain(self) -> str | None:
        """Why a handshake failed, if one did (a sentence saying what to fix)."""
        for address, (_, monitor) in self._monitors.items():
            if not monitor.poll(0):
                continue
            event = zmq.utils.monitor.recv_monitor_message(monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH and isinstance(self._public, bytes):
                return (f"the server at {address} refused this client's CURVE key "
                        f"{fingerprint(self._public)}: put its public key (.key) in the "
                        "server's --curve-authorized folder, under workers/ or observers/")
            return (f"the security handshake with {address} failed: this client's CURVE "
                    "settings do not match the server's (with CURVE, curve_server_key must "
                    "be the servers' public key and curve_key this client's key pair; "
                    "without it, the server must run without --curve-key)")
        return None

    def explained(self, error: Exception) -> Exception:
        """``error`` (a server that never answered), or a clearer one naming CURVE."""
        why = self.explain()
        return error if why is None else type(error)(why)

    def close(self) -> None:
        for sock, monitor in self._monitors.values():
            if not sock.closed:
                sock.disable_monitor()
            monitor.close(linger=0)
