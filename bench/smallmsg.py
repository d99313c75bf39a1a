"""What one small request costs in Python, without sockets: decoding its header (the full
check, and from a known template), and a server core's whole handling of a push (decode,
validate, apply, reply header), each timed in a tight loop (best of 3 repetitions).

    python bench/smallmsg.py                 # 4 KiB float32 push; --kib for other sizes
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zps.config import ServerConfig
from zps.protocol import Op, Request, TensorMeta, decode_request, encode_reply, encode_request
from zps.protocol.templates import TemplateCache
from zps.server.core import ServerCore


def best(fn: Callable[[], Any], number: int) -> float:
    """Microseconds a call, best of 3 repetitions of ``number`` calls."""
    fn()
    return min(timeit.repeat(fn, number=number, repeat=3)) / number * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kib", type=int, default=4, help="the pushed tensor's size")
    parser.add_argument("--number", type=int, default=20000, help="calls a repetition")
    parser.add_argument("--out", default="bench/results/smallmsg.json")
    args = parser.parse_args()
    value = np.ones(args.kib * 256, np.float32)
    meta = (TensorMeta.of("t", value),)
    rid = [10]

    def frames(op: Op = Op.PUSH) -> list[Any]:
        rid[0] += 1
        packed = encode_request(Request(op, "c-0123456789ab", rid[0], meta,
                                        buffers=(value.data,), watermark=rid[0]))
        return [zmq.Frame(packed[0]), zmq.Frame(value.data)]

    cache = TemplateCache()
    fixed = frames()
    results: dict[str, float] = {
        "encode a push request (client)": best(lambda: encode_request(Request(
            Op.PUSH, "c-0123456789ab", 7, meta, buffers=(value.data,), watermark=7)),
            args.number),
        "decode a push header, full check": best(lambda: decode_request(fixed), args.number),
        "decode a push header, known template": best(
            lambda: decode_request(fixed, templates=cache), args.number),
    }
    for label, templates in (("full check", None), ("templates", TemplateCache())):
        core = ServerCore(ServerConfig(mode="async", workers=1), "bench")
        core.handle(b"p", Request(Op.HELLO, "c-0123456789ab", 1, options={"role": "worker"}),
                    time.monotonic())
        core.handle(b"p", decode_request(frames(Op.INIT)), time.monotonic())

        def handle(core: ServerCore = core, templates: TemplateCache | None = templates,
                   ) -> None:
            request = decode_request(frames(), templates=templates)
            for out in core.handle(b"p", request, time.monotonic()):
                encode_reply(out.reply)
        making = best(frames, args.number)  # the client's part, taken off
        results[f"server handles a push ({label})"] = best(handle, args.number) - making
    print(f"{'step':<44} {'us':>7}")
    for step, micros in results.items():
        print(f"{step:<44} {micros:7.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"kib": args.kib, "microseconds": results}, indent=1))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
