"""How much request identity a snapshot carries after a long run.

A server remembers which requests it applied, so a retry is applied once; that state
travels in every snapshot a standby reads and every checkpoint. This fills a server's
request ledger as a run of ``--clients`` clients x ``--tables`` tables x ``--pushes``
pushes each would (one call in flight per client, as the blocking client does), then
measures the identity state's encoded size, the whole snapshot header's size, and how long
encoding takes. Prints a table and writes JSON.

    python bench/identity.py                       # 8 clients x 16 tables x 10k pushes
    python bench/identity.py --pushes 1000         # quicker
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import msgpack
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zps.config import ServerConfig
from zps.server.core import ServerCore
from zps.store.snapshot import encode_snapshot, take_snapshot

LIMIT = 1 << 20  # the identity state must stay under 1 MiB (issue target)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--tables", type=int, default=16)
    parser.add_argument("--pushes", type=int, default=10_000)
    parser.add_argument("--out", default="bench/results/identity.json")
    args = parser.parse_args()
    core = ServerCore(ServerConfig(), "bench")
    for table in range(args.tables):
        core.store.create(f"t{table}", np.zeros(4, np.float32))
    ledger = core.state.ledger
    started = time.perf_counter()
    for client in range(args.clients):
        name = f"worker-{client}"
        for rid in range(1, args.pushes + 1):
            ledger.advance(name, rid)  # the watermark every update carries
            for table in range(args.tables):
                ledger.applied(name, f"t{table}", rid)
    fill_s = time.perf_counter() - started
    started = time.perf_counter()
    identity = len(msgpack.packb(ledger.export()))
    header, _ = encode_snapshot(take_snapshot(core.store, 1, core.extra_state()))
    encode_s = time.perf_counter() - started
    updates = args.clients * args.tables * args.pushes
    rows = [("updates recorded", f"{updates:,}"),
            ("identity state (bytes)", f"{identity:,}"),
            ("snapshot header (bytes)", f"{len(header):,}"),
            ("target", f"< {LIMIT:,} ({'met' if identity < LIMIT else 'MISSED'})"),
            ("ledger updates/s", f"{updates / fill_s:,.0f}"),
            ("encode ms", f"{encode_s * 1000:.1f}")]
    for key, value in rows:
        print(f"{key:>26}  {value}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "clients": args.clients, "tables": args.tables, "pushes": args.pushes,
        "identity_bytes": identity, "header_bytes": len(header),
        "ledger_updates_per_s": updates / fill_s, "encode_s": encode_s}, indent=1))
    print(f"\nwrote {args.out}")
    return 0 if identity < LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
