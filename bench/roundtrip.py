"""Where a blocking small round trip's time goes: each side of zps against the cheapest
other side, beside the raw echo, in one run.

One client process, one server process, one call at a time, the cells taking turns:

- **raw echo**: a pyzmq DEALER against a pyzmq ROUTER that sends each message back (the
  ceiling ``bench/throughput.py`` compares with);
- **raw client, zps server**: the zps request's own bytes (its header packed once, as
  the zps client does) sent by a bare DEALER to ``zps-server``: the server's work and
  nothing of the client's;
- **zps client, canned server**: ``zps.Client`` against a ROUTER that answers each
  request with a reply built once (only its request id changes), as cheap as the echo:
  the client's work and nothing of the server's;
- **zps client, zps server**: what a training loop gets.

For each pair: round trips/s, x raw, and the CPU time of the client and of the server
process per round trip (every thread, user and system time: the kernel's and ZeroMQ's I/O
threads' share included). The two middle rows bound what work on one side can give: no
client does better against this server than the raw one, and no server better for this
client than the canned one. Prints a table and writes JSON.

    python bench/roundtrip.py                 # 4 KiB float32 push_pull, 3 repetitions
    python bench/roundtrip.py --ops push,push_pull --kib 4 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zps
from bench.throughput import _echo_server, bound_router
from zps.config import ServerConfig
from zps.protocol import Op, Reply, Request, RequestEncoder, TensorMeta, decode_request
from zps.protocol.framing import encode_reply
from zps.protocol.templates import prefix, split, suffix
from zps.server.core import ServerCore

ROOT = Path(__file__).resolve().parent.parent
PAIRS = ("raw echo", "raw client, zps server", "zps client, canned server",
         "zps client, zps server")
OPS = ("push", "pull", "push_pull")
TABLE = "t"
CLIENT_ID = "roundtrip"
TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """Seconds of CPU (user + system, every thread) process ``pid`` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def free_address() -> str:
    with zmq.Context() as ctx, ctx.socket(zmq.ROUTER) as probe:
        port = probe.bind_to_random_port("tcp://127.0.0.1")
        probe.close(linger=0)
    return f"tcp://127.0.0.1:{port}"


# ---------------------------------------------------------------- servers


def _canned_server(address: str, ready: Any) -> None:
    """A ROUTER speaking zps: each request is handled once by a real server core, and
    its reply kept; a later request of the same kind (the same header prefix) gets that
    reply again with its own request id, for the cost of an echo."""
    core = ServerCore(ServerConfig(mode="async", heartbeat_interval=0), "canned")
    canned: dict[bytes, tuple[bytes, list[Any]]] = {}
    sock = bound_router(address, ready)
    while True:
        frames = sock.recv_multipart(copy=False)
        peer, header = frames[0], frames[1].bytes
        parts = split(header)
        found = canned.get(parts[0]) if parts is not None else None
        if found is not None and parts is not None:
            sock.send_multipart([peer, found[0] + suffix(parts[2], None), *found[1]],
                                copy=False)
            continue
        request = decode_request(frames[1:])
        for outgoing in core.handle(peer, request, time.monotonic()):
            reply = outgoing.reply
            sock.send_multipart([outgoing.peer, *encode_reply(reply)])
            if parts is not None and request.op in (Op.PUSH, Op.PULL, Op.PUSH_PULL) \
                    and reply.error is None:
                canned[parts[0]] = _reply_prefix(reply), [np.array(b) for b in reply.buffers]


def _reply_prefix(reply: Reply) -> bytes:
    """``reply``'s header without its request id, which ``suffix`` appends."""
    header = encode_reply(Reply(None, reply.tensors, reply.info, None, reply.buffers))[0]
    fields = msgpack.unpackb(header)
    del fields["r"]
    return prefix(fields, False)


def zps_server(address: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(ROOT / "bin" / "zps-server"), "--bind", address,
                             "--mode", "async", "--log-level", "warning", "--workers", "1"])


# ---------------------------------------------------------------- clients


def _calls(kind: str, op: str, address: str, size: int) -> tuple[Callable[[], Any], Any]:
    """The call a client repeats, and what to close after."""
    value = np.ones(size // 4, np.float32)
    ctx = zmq.Context()
    if kind == "raw echo":
        sock = ctx.socket(zmq.DEALER)
        sock.connect(address)
        message: list[Any] = [b"h" * 60, value.data]

        def echo() -> None:
            sock.send_multipart(message, copy=True)
            sock.recv_multipart(copy=False)
        return echo, sock
    ps = zps.Client([address], heartbeat_interval=0, client_id=CLIENT_ID, coalesce=False)
    ps.init({TABLE: np.zeros_like(value)})
    if kind.startswith("zps client"):
        return {"push": lambda: ps.push({TABLE: value}),
                "pull": lambda: ps.pull([TABLE]),
                "push_pull": lambda: ps.push_pull({TABLE: value})}[op], ps
    # A bare DEALER sending what the zps client sends (fresh ids past the client's).
    sock = ctx.socket(zmq.DEALER)
    sock.connect(address)
    encoder, rid = RequestEncoder(), [1 << 40]
    pushes = op != "pull"
    tensors = (TensorMeta(TABLE, "float32", value.shape, value.nbytes),) if pushes else ()
    names = () if pushes else (TABLE,)
    buffers = (value.data,) if pushes else ()

    def raw() -> None:
        rid[0] += 1
        sock.send_multipart(encoder.frames(Request(
            Op(op), CLIENT_ID, rid[0], tensors, names, {}, buffers, (),
            rid[0] if pushes else None)), copy=True)
        sock.recv_multipart(copy=False)
    ps.close()
    return raw, sock


def _client(kind: str, op: str, address: str, size: int, seconds: float, out: Any) -> None:
    call, closing = _calls(kind, op, address, size)
    for _ in range(200):
        call()
    out.put("warm")
    count, cpu0, t0 = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        call()
        count += 1
    out.put((count, time.perf_counter() - t0, time.process_time() - cpu0))
    closing.close()


def cell(kind: str, op: str, size: int, seconds: float) -> dict[str, float]:
    """One pair measured once: round trips/s and CPU microseconds a round trip."""
    mpc = mp.get_context("spawn")
    address, ready = free_address(), mpc.Event()
    server: Any
    if kind.endswith("zps server"):
        server = zps_server(address)
    else:
        server = mpc.Process(target=_echo_server if kind == "raw echo" else _canned_server,
                             args=(address, ready), daemon=True)
        server.start()
        ready.wait(30)
    try:
        out = mpc.Queue()
        client = mpc.Process(target=_client, args=(kind, op, address, size, seconds, out))
        client.start()
        out.get(timeout=120)  # warmed up
        server_cpu0 = process_cpu(server.pid)
        count, taken, client_cpu = out.get(timeout=120)
        server_cpu = process_cpu(server.pid) - server_cpu0
        client.join(30)
    finally:
        server.kill()
        (server.wait if isinstance(server, subprocess.Popen) else server.join)()
    return {"rt_per_s": count / taken, "client_cpu_us": client_cpu / count * 1e6,
            "server_cpu_us": server_cpu / count * 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", default="push_pull", help=f"any of {','.join(OPS)}")
    parser.add_argument("--kib", type=int, default=4, help="the tensor's size")
    parser.add_argument("--seconds", type=float, default=1.5, help="per cell")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the four pairs")
    parser.add_argument("--out", default="bench/results/roundtrip.json")
    args = parser.parse_args()
    ops = [op for op in args.ops.split(",") if op]
    if not ops or set(ops) - set(OPS) or args.kib < 1 or args.repeat < 1:
        parser.error(f"--ops takes {','.join(OPS)}; --kib and --repeat are >= 1")
    size = args.kib << 10
    rows = []
    for op in ops:
        runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in PAIRS}
        for _ in range(args.repeat):
            for kind in PAIRS:
                runs[kind].append(cell(kind, op, size, args.seconds))
                got = runs[kind][-1]
                print(f"{op} {kind:>26}: {got['rt_per_s']:8.0f} rt/s, client "
                      f"{got['client_cpu_us']:5.0f} us, server {got['server_cpu_us']:5.0f} us",
                      flush=True)
        raw = statistics.median(r["rt_per_s"] for r in runs["raw echo"])
        for kind in PAIRS:
            medians = {key: statistics.median(r[key] for r in runs[kind])
                       for key in runs[kind][0]}
            rows.append({"op": op, "kib": args.kib, "pair": kind, **medians,
                         "ratio_to_raw": medians["rt_per_s"] / raw})
    print(f"\n{'op':>9} {'pair':>26} {'rt/s':>8} {'x raw':>6} {'client us':>10} "
          f"{'server us':>10}   (medians of {args.repeat}; CPU a round trip)")
    for r in rows:
        print(f"{r['op']:>9} {r['pair']:>26} {r['rt_per_s']:8.0f} {r['ratio_to_raw']:6.2f} "
              f"{r['client_cpu_us']:10.0f} {r['server_cpu_us']:10.0f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "machine": {"python": platform.python_version(), "cpus": mp.cpu_count(),
                    "load": os.getloadavg(), "pyzmq": zmq.__version__,
                    "libzmq": zmq.zmq_version()},
        "seconds_per_cell": args.seconds, "repeat": args.repeat, "rows": rows,
    }, indent=1))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
