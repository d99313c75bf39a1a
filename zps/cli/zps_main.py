"""``zps``: look at a running cluster: ``zps stats``, ``tables``, ``export``, ``top``;
make its CURVE keys: ``zps keygen``.

Each look connects as an observer (it never counts in a round and changes nothing) to
the servers given, in the workers' order.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from zps.cli.keygen import FOLDER_OF, keygen
from zps.cli.options import UsageError, run_cli
from zps.client import Client
from zps.errors import ConfigError, ZpsError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not usage and a line
        raise UsageError(f"{message} (see {self.prog} --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="zps", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, text in (("stats", "each server's counters, members and tables"),
                       ("tables", "the tables the servers hold: kind, dtype, shape, version"),
                       ("export", "pull every dense table into one .npz file"),
                       ("top", "a live view: servers, rounds/s, bytes/s, members, lag")):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("servers", nargs="+", metavar="ADDR",
                         help="server endpoints (tcp://HOST:PORT), in the workers' order")
        sub.add_argument("--timeout", type=float, default=5.0,
                         help="seconds to wait for each server (default 5)")
        if name == "export":
            sub.add_argument("--out", required=True, help="the .npz file to write")
        elif name == "top":
            sub.add_argument("--interval", type=float, default=1.0,
                             help="seconds between refreshes (default 1)")
            sub.add_argument("--count", type=int, default=None,
                             help="refreshes before exiting (default: until Ctrl-C)")
        else:
            sub.add_argument("--json", action="store_true", help="print JSON, not a table")
        sub.add_argument("--curve-server-key", metavar="FILE", default="",
                         help="with CURVE: the servers' public key (server.key)")
        sub.add_argument("--curve-key", metavar="FILE", default="",
                         help="with CURVE: this client's key pair (observer.key_secret)")
    text = "write CURVE key pairs and the folder of authorized keys"
    sub = commands.add_parser("keygen", help=text, description=text)
    sub.add_argument("dir", metavar="DIR", help="where to write the keys")
    sub.add_argument("--name", default=None,
                     help="write one more pair, NAME.key and NAME.key_secret (default: the "
                          "server, worker and observer pairs of a new cluster)")
    sub.add_argument("--role", default="worker", choices=sorted(FOLDER_OF),
                     help="what --name's key may do (default worker)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    def _main() -> int:
        parser = _parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        if args.command == "keygen":
            try:
                lines = keygen(Path(args.dir), args.name, args.role)
            except (ConfigError, OSError) as exc:
                raise UsageError(str(exc)) from None
            print("\n".join(lines))
            return 0
        if args.command == "export" and Path(args.out).suffix != ".npz":
            raise UsageError(f"--out {args.out} must end in .npz")
        if not (args.timeout > 0 and math.isfinite(args.timeout)):
            raise UsageError("--timeout must be > 0 (seconds to wait for each server)")
        if args.command == "top" and not (args.interval > 0 and math.isfinite(args.interval)
                                          and (args.count is None or args.count >= 1)):
            raise UsageError("--interval must be > 0 and --count >= 1")
        try:
            with Client(args.servers, role="observer", heartbeat_interval=0,
                        connect_timeout=args.timeout, timeout=args.timeout, retries=0,
                        curve_server_key=args.curve_server_key or None,
                        curve_key=args.curve_key or None) as ps:
                return COMMANDS[args.command](ps, args)
        except (ConfigError, ZpsError) as exc:
            raise UsageError(str(exc)) from None

    run_cli("zps", _main)


def _stats(ps: Client, args: argparse.Namespace) -> int:
    found = ps.stats()
    if args.json:
        print(json.dumps(found, default=str, indent=1))
        return 0
    for info in found:
        members = info.get("members", [])
        counters = info.get("counters", {})
        print(f"{info.get('address')}: {info.get('role')}, mode {info.get('mode')}, epoch "
              f"{info.get('epoch')}, seq {info.get('seq')}, rounds {info.get('rounds')}, "
              f"requests {counters.get('requests')}, batches {counters.get('batches', 0)}, "
              f"errors {counters.get('errors')}")
        for member in members:
            print(f"  member {member.get('id')}: {member.get('role')} {member.get('state')}, "
                  f"clock {member.get('clock')}, straggles {member.get('straggles')}")
        for table in info.get("tables", []):
            print(f"  table {table.get('name')}: {table.get('kind')}, version "
                  f"{table.get('version')}, rounds {table.get('rounds', '-')}")
    return 0


def _tables(ps: Client, args: argparse.Namespace) -> int:
    found = ps.tables()
    if args.json:
        print(json.dumps(found, indent=1))
        return 0
    rows = [("name", "kind", "dtype", "shape", "version", "rows")]
    rows += [(str(t["name"]), str(t.get("kind")), str(t.get("dtype")),
              "x".join("?" if n is None else str(n) for n in t.get("shape", [])) or "()",
              str(t.get("version", "")), str(t.get("rows", "")))
             for t in found]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _export(ps: Client, args: argparse.Namespace) -> int:
    out = Path(args.out)
    tables: dict[str, Any] = ps.pull()
    with out.open("wb") as handle:
        np.savez(handle, **tables)
    size = sum(int(a.nbytes) for a in tables.values())
    print(f"wrote {len(tables)} dense tables ({size} bytes) to {out}", file=sys.stderr)
    return 0


def _top(ps: Client, args: argparse.Namespace) -> int:
    from zps.cli.top import top

    top(ps.stats, args.interval, args.count)
    return 0


COMMANDS = {"stats": _stats, "tables": _tables, "export": _export, "top": _top}


if __name__ == "__main__":
    main()
