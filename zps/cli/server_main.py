"""``zps-server``: run one parameter server process until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Mapping, Sequence

import zmq

from zps.cli.logs import FORMATS, setup_logging
from zps.cli.options import (
    Option,
    UsageError,
    checked,
    non_negative_float,
    parse,
    positive_float,
    positive_int,
    run_cli,
)
from zps.cli.procs import run_group
from zps.config import ServerConfig, parse_mode
from zps.consistency.aggregate import parse_rule
from zps.consistency.rates import RATE_RULES
from zps.errors import ConfigError, ZpsError
from zps.exposition import parse_bind
from zps.protocol import Limits
from zps.runtime import run
from zps.server import Server
from zps.store import parse_optimizer
from zps.transport import check_endpoint

OPTIONS = (
    Option("bind", str, "tcp://127.0.0.1:5570",
           "ZeroMQ endpoint to bind, e.g. tcp://*:5570 (port 0 picks a free one)"),
    Option("mode", checked(parse_mode), "sync",
           "consistency: sync (rounds), async (apply on arrival) or ssp:K (bounded "
           "staleness: no worker reads more than K clocks ahead of the slowest)"),
    Option("workers", positive_int, 1,
           "sync: the first round waits until this many workers have registered"),
    Option("quorum", int, 0,
           "sync: close a round once the first K workers pushed (backup workers; 0: all)"),
    Option("late", str, "drop",
           "sync with quorum or round timeout: a push for a closed round is dropped (and "
           "counted) or folded into the next round", choices=("drop", "fold")),
    Option("round-timeout", non_negative_float, 0.0,
           "sync: close a round after this many seconds without the missing workers, who are "
           "counted as stragglers (0: wait for them)"),
    Option("aggregate", checked(parse_rule), "mean",
           "sync: how a round combines updates: mean, weighted, median or trimmed:B"),
    Option("lr-rule", str, "constant",
           "async/ssp: per-worker rate eta_i: constant, staleness (lr_scale / staleness) or "
           "loss (by each worker's loss decrease)", choices=RATE_RULES),
    Option("lr-scale", non_negative_float, 1.0, "async/ssp: theta += eta_i * delta"),
    Option("optimizer", checked(parse_optimizer), "",
           "server-side optimizer for tables whose init names none: sgd:LR[:MOMENTUM] or "
           "adam:LR; workers then push gradients (default: pushes are deltas)"),
    Option("heartbeat-interval", positive_float, 1.0, "seconds between client heartbeats"),
    Option("liveness", positive_int, 10,
           "heartbeat intervals of silence before a worker is declared dead"),
    Option("metrics-bind", checked(parse_bind), "",
           "serve Prometheus /metrics on HOST:PORT, e.g. 127.0.0.1:9100 (default: none)"),
    Option("max-message-bytes", positive_int, 1 << 30, "largest message accepted"),
    Option("log-every", positive_int, 100, "log one line every N applied rounds"),
    Option("log-level", str, "info", "logging level",
           choices=("debug", "info", "warning", "error")),
    Option("log-format", str, "text", "text lines, or one JSON object a line (for log "
           "collectors)", choices=FORMATS),
    Option("curve-key", str, "",
           "turn CURVE on: this server's key pair file (server.key_secret from `zps keygen`)"),
    Option("curve-authorized", str, "",
           "with --curve-key: the folder of public keys allowed in, by role "
           "(workers/, standbys/, observers/; default: authorized/ beside the key file, "
           "where `zps keygen DIR` writes it)"),
    Option("curve-server-key", str, "",
           "a standby's CURVE: its primary's public key (default: the public half of "
           "--curve-key, for servers sharing one key pair)"),
    Option("procs", positive_int, 1,
           "run N server processes behind this one command, one per core (ports --bind's "
           "+ 0..N-1; checkpoints in DIR/shard-i); clients given the first address use all"),
    Option("group", str, "", "set by --procs: the addresses of the whole group (internal)"),
    Option("ready-file", str, "", "write the bound address to this file once listening"),
    Option("standby-of", str, "",
           "run as the hot standby of this primary (tcp://HOST:PORT): mirror its tables and "
           "take over when it stops"),
    Option("replication", str, "sync",
           "sync: acknowledge an update once the standby holds it (nothing acknowledged is "
           "lost); async: once applied here (the standby trails by the lag)",
           choices=("sync", "async")),
    Option("pub-bind", str, "",
           "endpoint of the change stream standbys subscribe to (default: the host of "
           "--bind, any free port)"),
    Option("repl-interval", positive_float, 0.1, "seconds between the primary's heartbeats"),
    Option("repl-liveness", positive_int, 5,
           "heartbeats missed before a standby takes over (interval x liveness)"),
    Option("checkpoint-dir", str, "", "write checkpoints to this folder (and one at shutdown)"),
    Option("checkpoint-every", non_negative_float, 0.0,
           "seconds between checkpoints (0: only at shutdown, unless --checkpoint-rounds)"),
    Option("checkpoint-rounds", int, 0, "sync: a checkpoint every N rounds (0: never)"),
    Option("restore", str, "", "resume from the newest checkpoint in this folder"),
    Option("inject-pub-drops", int, 0,
           "testing only: drop every Nth published change (the standby must repair it)"),
)


def load_config(
    argv: Sequence[str] | None, environ: Mapping[str, str]
) -> tuple[ServerConfig, dict[str, object]]:
    """Parse flags, environment and TOML into a frozen ``ServerConfig``."""
    values = parse("zps-server", "Run a zps parameter server.", OPTIONS, argv, environ)
    try:
        check_endpoint(str(values["bind"]), "--bind")
        if values["pub_bind"]:
            check_endpoint(str(values["pub_bind"]), "--pub-bind")
        if values["standby_of"]:
            check_endpoint(str(values["standby_of"]), "--standby-of")
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    if values["quorum"] < 0:
        raise UsageError("--quorum must be >= 0 (0 waits for every live worker)")
    config = ServerConfig(
        bind=values["bind"],
        mode=values["mode"],
        workers=values["workers"],
        quorum=values["quorum"],
        late=values["late"],
        round_timeout=values["round_timeout"],
        aggregate=values["aggregate"],
        lr_rule=values["lr_rule"],
        lr_scale=values["lr_scale"],
        optimizer=parse_optimizer(values["optimizer"]),
        heartbeat_interval=values["heartbeat_interval"],
        liveness=values["liveness"],
        log_every_rounds=values["log_every"],
        limits=Limits(max_message_bytes=values["max_message_bytes"]),
        standby_of=values["standby_of"],
        replication=values["replication"],
        pub_bind=values["pub_bind"],
        repl_interval=values["repl_interval"],
        repl_liveness=values["repl_liveness"],
        checkpoint_dir=values["checkpoint_dir"],
        checkpoint_every=values["checkpoint_every"],
        checkpoint_rounds=values["checkpoint_rounds"],
        restore=values["restore"],
        inject_pub_drops=values["inject_pub_drops"],
        metrics_bind=values["metrics_bind"],
        curve_key=values["curve_key"],
        curve_authorized=values["curve_authorized"],
        curve_server_key=values["curve_server_key"],
        group=tuple(a for a in str(values["group"]).split(",") if a),
    )
    if config.standby_of and config.restore:
        raise UsageError("--standby-of and --restore exclude each other: a standby copies "
                         "its primary's state")
    if min(config.checkpoint_rounds, config.inject_pub_drops) < 0:
        raise UsageError("--checkpoint-rounds and --inject-pub-drops must be >= 0")
    return config, values


async def serve(config: ServerConfig, ready_file: str = "") -> int:
    """Serve until SIGTERM/SIGINT, then shut down cleanly (failing waiting requests,
    writing the final checkpoint); the exit status."""
    loop = asyncio.get_running_loop()
    server = Server(config)
    try:
        server.start()
    except zmq.ZMQError as exc:
        await server.close()
        raise UsageError(f"cannot bind {config.bind}: {exc}") from None
    except ZpsError as exc:  # a bad address, an unusable checkpoint or checkpoint folder
        await server.close()
        raise UsageError(str(exc)) from None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.stop)  # serve() returns; close() runs once below
    if ready_file:
        try:
            _write_atomically(ready_file, server.address)
        except OSError as exc:
            await server.close()
            raise UsageError(f"cannot write --ready-file {ready_file}: {exc.strerror}") from None
    await server.serve()
    await server.close()
    if server.failed:
        print(f"zps-server: error: {server.failed}", file=sys.stderr)
        return 1
    return 0


def _write_atomically(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    def _main() -> int:
        config, values = load_config(argv, os.environ)
        setup_logging(str(values["log_level"]), str(values["log_format"]))
        if int(str(values["procs"])) > 1:
            return run_group(sys.argv[1:] if argv is None else list(argv), values)
        return run(serve(config, str(values["ready_file"])))

    run_cli("zps-server", _main)


if __name__ == "__main__":
    main()
