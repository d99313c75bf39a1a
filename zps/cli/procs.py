"""``zps-server --procs N``: N shard processes behind one command, for every core of a host.

One Python process serves at most one core, so a host with several cores runs several
servers. This supervisor starts N ``zps-server`` processes with the same settings, each on
its own port (``--bind``'s port + i, or free ports for port 0), its own metrics port and
checkpoint folder (``DIR/shard-i``), and tells each the whole group (``--group``): every
hello answers it, so a client given the first address places its tables over all N
(``zps.client.connect.regrouped``). With ``--standby-of``, child i follows the primary
group's child i. SIGTERM and SIGINT go to every child; if one dies the others are stopped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from zps.cli.options import UsageError
from zps.endpoints import public_endpoint

READY_SECONDS = 60.0  # how long the children may take to listen
GROUP_SECONDS = 60.0  # how long a standby group waits for its primary group to answer


def free_port(host: str) -> int:
    """A port free on ``host`` now (the child binds it a moment later)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host if host not in ("*", "0.0.0.0") else "", 0))
        return int(probe.getsockname()[1])


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    return host, 0 if port in ("*", "0") else int(port)


def plan_group(values: Mapping[str, Any], count: int) -> list[dict[str, str]]:
    """Each child's own settings: bind, group, metrics, checkpoint folders (as flags)."""
    bind = str(values["bind"])
    if not bind.startswith("tcp://"):
        raise UsageError("--procs needs a tcp:// --bind (each process takes a port of its own)")
    host, port = _split(bind)
    ports = [port + i if port else free_port(host) for i in range(count)]
    if max(ports) > 65535:
        raise UsageError(f"--bind port {port} + --procs {count} passes 65535")
    group = ",".join(f"tcp://{host}:{p}" for p in ports)  # a wildcard host: the client's
    children = []
    for i, child_port in enumerate(ports):
        flags = {"bind": f"tcp://{host}:{child_port}", "group": group, "procs": "1"}
        if values["metrics_bind"]:
            mhost, mport = str(values["metrics_bind"]).rsplit(":", 1)
            flags["metrics-bind"] = f"{mhost}:{int(mport) + i if int(mport) else 0}"
        if values["pub_bind"]:
            phost, pport = _split(str(values["pub_bind"]))
            flags["pub-bind"] = f"tcp://{phost}:{pport + i if pport else 0}"
        for key in ("checkpoint_dir", "restore"):
            if values[key]:
                flags[key.replace("_", "-")] = str(Path(values[key]) / f"shard-{i}")
        children.append(flags)
    return children


def primary_group(address: str, values: Mapping[str, Any]) -> list[str]:
    """The addresses of the primary group a standby group follows (asked by hello)."""
    import zps

    curve = {"curve_server_key": values["curve_server_key"] or None,
             "curve_key": values["curve_key"] or None}
    if curve["curve_key"] and not curve["curve_server_key"]:
        from zps.curve import load_pair

        curve["curve_server_key"] = load_pair(values["curve_key"], "--curve-key").public
    deadline = time.monotonic() + GROUP_SECONDS
    while True:
        try:
            with zps.Client([address], role="observer", heartbeat_interval=0,
                            connect_timeout=2.0, **curve) as probe:
                group = probe.server_info.get("group") or [address]
                return [public_endpoint(str(a), address) for a in group]
        except zps.ServerUnreachable:
            if time.monotonic() > deadline:
                raise UsageError(f"--standby-of {address}: no answer within "
                                 f"{GROUP_SECONDS:.0f} s") from None
        except zps.ZpsError as exc:
            raise UsageError(f"--standby-of {address}: {exc}") from None


def run_group(argv: Sequence[str], values: Mapping[str, Any]) -> int:
    """Run ``values["procs"]`` children until a signal or a child's death; exit status."""
    count = int(values["procs"])
    children = plan_group(values, count)
    if values["standby_of"]:
        primaries = primary_group(str(values["standby_of"]), values)
        if len(primaries) != count:
            raise UsageError(f"--standby-of {values['standby_of']} is a group of "
                             f"{len(primaries)} processes: give this standby --procs "
                             f"{len(primaries)}")
        for flags, primary in zip(children, primaries, strict=True):
            flags["standby-of"] = primary
    with tempfile.TemporaryDirectory(prefix="zps-procs-") as folder:
        procs = []
        for i, flags in enumerate(children):
            flags["ready-file"] = os.path.join(folder, f"ready-{i}")
            extra = [part for key, value in flags.items() for part in (f"--{key}", value)]
            procs.append(subprocess.Popen([sys.executable, "-m", "zps.cli.server_main",
                                           *argv, *extra], preexec_fn=_die_with_parent))
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        try:
            if not _wait_ready(procs, [f["ready-file"] for f in children], stop):
                return _stop_all(procs, 1)
            if values["ready_file"]:  # the first process's address, once all listen
                ready = Path(str(values["ready_file"]))
                ready.with_name(ready.name + ".tmp").write_text(
                    Path(children[0]["ready-file"]).read_text())
                os.replace(ready.with_name(ready.name + ".tmp"), ready)
            while not stop.wait(0.2):
                if any(p.poll() is not None for p in procs):
                    print("zps-server: a process of the group exited; stopping the others",
                          file=sys.stderr)
                    return _stop_all(procs, 1)
            return _stop_all(procs, 0)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()


def _die_with_parent() -> None:
    """In the child: SIGTERM when the supervisor dies, even by SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PDEATHSIG


def _wait_ready(procs: list[subprocess.Popen[bytes]], files: list[str],
                stop: threading.Event) -> bool:
    deadline = time.monotonic() + READY_SECONDS
    while not all(os.path.exists(f) for f in files):
        if stop.wait(0.05) or time.monotonic() > deadline or \
                any(p.poll() is not None for p in procs):
            return False
    return True


def _stop_all(procs: list[subprocess.Popen[bytes]], status: int) -> int:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    codes = [proc.wait(timeout=30) for proc in procs]
    return status or max((c for c in codes if c and c > 0), default=0)
