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

GROUP_SECONDS = 60.0  # how long a standby group waits for its primary group to answer
STOP_NOTICE = 10.0  # seconds of waiting for a stopping process before saying so
STOP_SECONDS = 60.0  # unattended (a process died, no signal): the others then are killed


def free_ports(host: str, count: int) -> list[int]:
    """``count`` distinct ports free on ``host`` now (the children bind them a moment
    later): every probe stays bound until all are chosen, so none is picked twice."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with contextlib.ExitStack() as probes:
        ports = []
        for _ in range(count):
            probe = probes.enter_context(socket.socket(family))
            probe.bind((host if host not in ("*", "0.0.0.0") else "", 0))
            ports.append(int(probe.getsockname()[1]))
        return ports


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    return host, 0 if port in ("*", "0") else int(port)


def plan_group(values: Mapping[str, Any], count: int) -> list[dict[str, str]]:
    """Each child's own settings: bind, group, metrics, checkpoint folders (as flags)."""
    bind = str(values["bind"])
    if not bind.startswith("tcp://"):
        raise UsageError("--procs needs a tcp:// --bind (each process takes a port of its own)")
    host, port = _split(bind)
    _check_room("--bind", port, count)
    ports = [port + i for i in range(count)] if port else free_ports(host, count)
    group = ",".join(f"tcp://{host}:{p}" for p in ports)  # a wildcard host: the client's
    mhost, mport = str(values["metrics_bind"]).rpartition(":")[::2]
    if values["metrics_bind"]:
        _check_room("--metrics-bind", int(mport), count)
    if values["pub_bind"] and not str(values["pub_bind"]).startswith("tcp://"):
        raise UsageError("--procs needs a tcp:// --pub-bind (each process takes a port of "
                         "its own), or none")
    phost, pport = _split(str(values["pub_bind"])) if values["pub_bind"] else ("", 0)
    _check_room("--pub-bind", pport, count)
    children = []
    for i, child_port in enumerate(ports):
        flags = {"bind": f"tcp://{host}:{child_port}", "group": group, "procs": "1"}
        if values["metrics_bind"]:
            flags["metrics-bind"] = f"{mhost}:{int(mport) + i if int(mport) else 0}"
        if values["pub_bind"]:
            flags["pub-bind"] = f"tcp://{phost}:{pport + i if pport else 0}"
        for key in ("checkpoint_dir", "restore"):
            if values[key]:
                flags[key.replace("_", "-")] = str(Path(values[key]) / f"shard-{i}")
        children.append(flags)
    return children


def _check_room(flag: str, port: int, count: int) -> None:
    if port and port + count - 1 > 65535:
        raise UsageError(f"{flag} port {port} + --procs {count} passes 65535: give a lower "
                         "port, or port 0 for free ones")


def primary_group(address: str, values: Mapping[str, Any]) -> list[str]:
    """The addresses of the primary group a standby group follows (asked by hello)."""
    import zps

    curve = {"curve_server_key": values["curve_server_key"] or None,
             "curve_key": values["curve_key"] or None}
    if curve["curve_key"] and not curve["curve_server_key"]:
        from zps.curve import load_pair

        try:
            curve["curve_server_key"] = load_pair(values["curve_key"], "--curve-key").public
        except zps.ZpsError as exc:
            raise UsageError(str(exc)) from None
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
    ready = Path(str(values["ready_file"])) if values["ready_file"] else None
    if ready is not None and not os.access(ready.parent, os.W_OK):
        raise UsageError(f"cannot write --ready-file {ready}: its folder {ready.parent} "
                         "does not exist or is not writable")
    with tempfile.TemporaryDirectory(prefix="zps-procs-") as folder:
        procs = []
        for i, flags in enumerate(children):
            flags["ready-file"] = os.path.join(folder, f"ready-{i}")
            extra = [part for key, value in flags.items() for part in (f"--{key}", value)]
            procs.append(subprocess.Popen([sys.executable, "-m", "zps.cli.server_main",
                                           *argv, *extra], preexec_fn=_die_with_parent))
        signals: list[int] = []
        stop = threading.Event()

        def on_signal(signum: int, _: Any) -> None:
            signals.append(signum)
            stop.set()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        try:
            if not _wait_ready(procs, [f["ready-file"] for f in children], stop):
                return _stop_all(procs, 1 if not signals else 0, signals)
            if ready is not None:  # the first process's address, once all listen
                try:
                    ready.with_name(ready.name + ".tmp").write_text(
                        Path(children[0]["ready-file"]).read_text())
                    os.replace(ready.with_name(ready.name + ".tmp"), ready)
                except OSError as exc:
                    print(f"zps-server: error: cannot write --ready-file {ready}: "
                          f"{exc.strerror}", file=sys.stderr)
                    return _stop_all(procs, 2, signals)
            while not stop.wait(0.2):
                for i, proc in enumerate(procs):
                    if proc.poll() is not None:
                        print(f"zps-server: process {i} of the group ({children[i]['bind']}) "
                              f"exited with status {proc.returncode}; stopping the others",
                              file=sys.stderr)
                        return _stop_all(procs, 1, signals)
            return _stop_all(procs, 0, signals)
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
    """Wait until every child listens (as long as they take: a restore may be long); False
    when one exited first or a signal came."""
    while not all(os.path.exists(f) for f in files):
        if stop.wait(0.05) or any(p.poll() is not None for p in procs):
            return False
    return True


def _stop_all(procs: list[subprocess.Popen[bytes]], status: int, signals: list[int]) -> int:
    """SIGTERM every child still running and wait for all (a final checkpoint may take a
    while): after a signal, until they stop or another signal comes, which kills them;
    unattended (a child died), at most ``STOP_SECONDS``. The highest status a child
    exited with (2: one was given a wrong setting), else ``status``."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    seen, started, told = len(signals), time.monotonic(), False
    while any(proc.poll() is None for proc in procs):
        time.sleep(0.05)
        waited = time.monotonic() - started
        if len(signals) > seen or (not signals and waited > STOP_SECONDS):
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
            status = status or 1
        elif not told and waited > STOP_NOTICE:
            told = True
            print("zps-server: waiting for the processes of the group to stop (" + (
                "send the signal again to kill them)" if signals else
                f"those still running after {STOP_SECONDS:.0f} s are killed)"),
                file=sys.stderr)
    return max((c for c in (p.returncode for p in procs) if c and c > 0), default=status)
