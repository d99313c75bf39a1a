"""The ZAP handler of a CURVE server: which keys may connect, and as what.

ZeroMQ asks the handler bound at ``inproc://zeromq.zap.01`` of the server's context about
every CURVE handshake (RFC 27). The answer comes from ``--curve-authorized DIR``: a public
key in ``DIR/workers``, ``DIR/standbys`` or ``DIR/observers`` connects with that role (its
user id, which every message it sends then carries, says so); any other key is refused
and logged once a minute by fingerprint (at most ten keys a minute, the rest counted). The
change stream's domain admits standby keys only. The folder is read again whenever it
changes, so a key added there is admitted, and a key removed or moved refused or demoted,
at its next connection without a restart (connections already open keep their role). A
refused client does not retry: ZeroMQ gives up on a connection whose key was refused.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import zmq
import zmq.auth
import zmq.utils.z85

from zps.curve import ROLE_FOLDERS, fingerprint
from zps.errors import ConfigError
from zps.server.access import Peer
from zps.server.publisher import STREAM_DOMAIN
from zps.transport import LoopSocket

log = logging.getLogger("zps.server")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
CLIENTS_DOMAIN = "zps"  # the ROUTER every client talks to
RESCAN_SECONDS = 1.0
LOG_AGAIN_SECONDS = 60.0
REMEMBERED_REFUSALS = 1024
LINES_PER_MINUTE = 10  # refusal lines of different keys; more are counted in one line


def read_authorized(folder: Path) -> dict[bytes, str]:
    """Public key (Z85) -> role, from the role subfolders of ``folder``; ``ConfigError`` if
    it has none of them, or one key appears under two roles."""
    if not folder.is_dir():
        raise ConfigError(f"--curve-authorized {folder} is not a folder (make one with "
                          "`zps keygen DIR`: it writes DIR/authorized)")
    found = [name for name in ROLE_FOLDERS if (folder / name).is_dir()]
    if not found:
        raise ConfigError(f"--curve-authorized {folder} has none of the subfolders "
                          f"{', '.join(ROLE_FOLDERS)}/ that hold the public keys of each role")
    keys: dict[bytes, str] = {}
    for name in found:
        role = ROLE_FOLDERS[name]
        for path in sorted((folder / name).glob("*.key")):
            try:
                public, _ = zmq.auth.load_certificate(str(path))
                zmq.utils.z85.decode(public)
            except Exception:  # any malformed file: skipped, the others still count
                log.warning("ignored %s: not a CURVE public key file", path)
                continue
            if keys.get(public, role) != role:
                raise ConfigError(f"key {fingerprint(public)} ({path.name}) is authorized as "
                                  f"both {keys[public]} and {role}; keep it in one folder")
            keys[public] = role
    return keys


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


class ZapHandler:
    """Answers ZeroMQ's authentication requests for one context, on the event loop."""

    def __init__(self, context: zmq.Context, folder: Path,
                 counters: dict[str, int] | None = None) -> None:
        self.folder = folder
        self._counters = counters if counters is not None else {}
        self.keys = read_authorized(folder)
        self._scanned = time.monotonic()
        self._stamped = self._stamp()
        self._refused: dict[bytes, float] = {}  # key -> when its refusal was last logged
        self._window, self._lines, self._unlogged = time.monotonic(), 0, 0
        self.refusals = 0
        sock = context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise ConfigError(f"cannot start CURVE authentication: {exc.strerror} (one CURVE "
                              "server per zmq.Context)") from None
        self._socket = LoopSocket(sock, self._on_request, asyncio.get_running_loop())

    def _stamp(self) -> tuple[int, ...]:
        """When the role folders last changed (a key added or removed)."""
        return tuple(_mtime(self.folder / name) for name in ROLE_FOLDERS)

    def role_of(self, public: bytes, now: float) -> str | None:
        """The role of ``public``, reading the folder again first if it changed (a key
        added, removed or moved to another role), or if the key is unknown and the folder
        was last read a while ago."""
        stamp = self._stamp()
        if stamp != self._stamped or (public not in self.keys
                                      and now - self._scanned >= RESCAN_SECONDS):
            self._scanned, self._stamped = now, stamp
            try:
                self.keys = read_authorized(self.folder)
            except ConfigError as exc:  # keep the keys we had
                log.warning("kept the authorized keys read before: %s", exc)
        return self.keys.get(public)

    def decide(self, domain: str, mechanism: bytes, credentials: list[bytes],
               address: str, now: float) -> tuple[bytes, bytes, bytes]:
        """(status code, status text, user id) for one handshake."""
        if mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != 32:
            return b"400", b"CURVE required", b""
        public = zmq.utils.z85.encode(credentials[0])
        role = self.role_of(public, now)
        if role is not None and (domain != STREAM_DOMAIN or role == "standby"):
            return b"200", b"OK", Peer(role, fingerprint(public)).user_id().encode()
        self.refusals += 1
        self._counters["refused_keys"] = self._counters.get("refused_keys", 0) + 1
        if now - self._window >= LOG_AGAIN_SECONDS:
            if self._unlogged:
                log.warning("refused %d more CURVE handshakes in the last minute (not "
                            "logged one by one)", self._unlogged)
            self._window, self._lines, self._unlogged = now, 0, 0
        if now - self._refused.get(public, -LOG_AGAIN_SECONDS) < LOG_AGAIN_SECONDS:
            return b"400", b"key not authorized", b""
        if self._lines >= LINES_PER_MINUTE:  # fresh keys, one after another: count them
            self._unlogged += 1
        else:
            self._lines += 1
            if len(self._refused) >= REMEMBERED_REFUSALS:
                self._refused.clear()
            self._refused[public] = now
            why = f"a {role} key may not follow the change stream" if role else \
                f"not in --curve-authorized {self.folder}"
            log.warning("refused CURVE key %s from %s: %s", fingerprint(public),
                        address or "?", why)
        return b"400", b"key not authorized", b""

    def _on_request(self, frames: list[zmq.Frame]) -> None:
        parts = [f.bytes for f in frames]
        # [routing id, b"", version, request id, domain, address, identity, mechanism, creds]
        if len(parts) < 8 or parts[1] != b"" or parts[2] != b"1.0":
            return  # not a ZAP request: libzmq sends nothing else here
        try:
            status, text, user = self.decide(parts[4].decode(errors="replace"), parts[7],
                                             parts[8:], parts[5].decode(errors="replace"),
                                             time.monotonic())
        except Exception:  # a bug must not leave the handshake hanging: refuse it
            log.exception("CURVE authentication failed; refused the handshake")
            status, text, user = b"500", b"authentication error", b""
        self._socket.send([parts[0], b"", b"1.0", parts[3], status, text, user, b""])

    def close(self) -> None:
        self._socket.close()
