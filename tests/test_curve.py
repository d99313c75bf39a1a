"""CURVE and roles on real sockets: who gets in, what each key may do, and that nothing a
refused client sends changes the state."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

import zps
from zps.cli.cluster import LocalCluster
from zps.cli.keygen import keygen
from zps.curve import client_curve, fingerprint, load_pair, load_public
from zps.protocol import Op, Request
from zps.server.access import ALLOWED, Peer, check_access, scoped

from .conftest import ServerThread, run_cli, wait_for


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    keygen(folder)
    keygen(folder, "worker2", "worker")
    keygen(folder, "stranger", "worker")
    (folder / "authorized" / "workers" / "stranger.key").unlink()  # made, never authorized
    return folder


def curve_server(start_server: Any, keys: Path, **overrides: Any) -> ServerThread:
    settings = {"mode": "async", "curve_key": str(keys / "server.key_secret"),
                "curve_authorized": str(keys / "authorized"), **overrides}
    return start_server(**settings)


def client(server: ServerThread, keys: Path, name: str | None, **options: Any) -> zps.Client:
    curve = {} if name is None else {"curve_server_key": str(keys / "server.key"),
                                     "curve_key": str(keys / f"{name}.key_secret")}
    return zps.Client(server.address, **curve, **options)


def table_bytes(server: ServerThread) -> dict[str, bytes]:
    return server.run(lambda: {t.name: t.data.tobytes() for t in server.server.core.store})


def test_keygen_writes_pairs_and_the_authorized_folder(keys: Path) -> None:
    for name in ("server", "worker", "observer"):
        pair = load_pair(keys / f"{name}.key_secret", "key")
        assert load_public(keys / f"{name}.key", "key") == pair.public
        assert (keys / f"{name}.key_secret").stat().st_mode & 0o077 == 0
    assert load_public(keys / "authorized" / "standbys" / "server.key", "k") == \
        load_pair(keys / "server.key_secret", "k").public
    again = run_cli("zps.cli.zps_main", "keygen", str(keys))
    assert again.returncode == 2 and len(again.stderr.splitlines()) == 1
    assert "never overwritten" in again.stderr


def test_a_worker_key_trains_and_an_observer_key_only_reads(start_server, keys: Path) -> None:
    server = curve_server(start_server, keys)
    with client(server, keys, "worker") as ps:
        ps.init({"w": np.zeros(8, np.float32)})
        ps.push({"w": np.ones(8, np.float32)})
        np.testing.assert_array_equal(ps.pull()["w"], 1)
    before = table_bytes(server)
    with client(server, keys, "observer", role="observer") as observer:
        np.testing.assert_array_equal(observer.pull()["w"], 1)
        assert observer.stats()[0]["tables"]
        with pytest.raises(zps.ForbiddenError, match="an observer key may not send push"):
            observer.push({"w": np.ones(8, np.float32)})
        assert observer.metrics()["errors"]["push"] == 1
    with pytest.raises(zps.ForbiddenError, match="may not register as a worker"):
        client(server, keys, "observer")  # an observer key cannot count in rounds
    assert table_bytes(server) == before


@pytest.mark.parametrize("name, reason", [
    (None, "security handshake .* failed"),
    ("stranger", "refused this client's CURVE key SHA256:"),
])
def test_a_client_without_an_authorized_key_gets_nothing(start_server, keys: Path, caplog,
                                                         name: str | None, reason: str) -> None:
    server = curve_server(start_server, keys)
    with client(server, keys, "worker") as ps:
        ps.init({"w": np.zeros(8, np.float32)})
    before = table_bytes(server)
    with caplog.at_level(logging.WARNING, "zps.server"), \
            pytest.raises(zps.ServerUnreachable, match=reason):
        client(server, keys, name, connect_timeout=1.0)
    assert table_bytes(server) == before
    assert server.run(lambda: server.server.core.counters["requests"]) == 3  # hello, init, bye
    if name == "stranger":
        stranger = fingerprint(load_public(keys / "stranger.key", "k"))
        refused = [r.getMessage() for r in caplog.records if "refused CURVE key" in
                   r.getMessage()]
        assert len(refused) == 1 and stranger in refused[0]  # once, however often it retried


def test_a_key_added_to_the_folder_gets_in_without_a_restart(start_server, keys: Path,
                                                             tmp_path: Path) -> None:
    folder = tmp_path / "authorized"
    shutil.copytree(keys / "authorized", folder)
    server = curve_server(start_server, keys, curve_authorized=str(folder))
    with pytest.raises(zps.ServerUnreachable):
        client(server, keys, "stranger", connect_timeout=0.5)
    shutil.copy(keys / "stranger.key", folder / "workers")
    with client(server, keys, "stranger", connect_timeout=5.0) as ps:
        assert ps.stats()[0]["role"] == "primary"


def test_no_key_may_act_for_another_keys_clients(start_server, keys: Path) -> None:
    server = curve_server(start_server, keys)
    members = lambda: server.run(  # noqa: E731
        lambda: sorted(m.client_id for m in server.server.core.members))
    with client(server, keys, "worker", client_id="w-1") as ps:
        ps.init({"w": np.zeros(4, np.float32)})
        ps.push({"w": np.ones(4, np.float32)})
        standby = curve_server(start_server, keys, standby_of=server.address)
        wait_for(lambda: server.run(lambda: server.server.core.replica.standby),
                 what="the standby to attach")
        attached = server.run(lambda: server.server.core.replica.standby)
        # Another worker key and an observer key use the same client ids: each gets a
        # client of its own, and its bye touches nobody else's.
        with client(server, keys, "worker2", client_id="w-1") as other:
            other.init({"w": np.zeros(4, np.float32)})
            other.push({"w": np.ones(4, np.float32)})
        with client(server, keys, "observer", role="observer",
                    client_id=attached.split("/", 1)[1]):
            pass
        assert server.run(lambda: server.server.core.replica.standby) == attached
        assert any(m.endswith("/w-1") for m in members())
        ps.push({"w": np.ones(4, np.float32)})  # the real w-1 is still registered
        np.testing.assert_array_equal(ps.pull()["w"], 3)
    standby.stop()


def test_a_malformed_key_file_is_skipped(start_server, keys: Path, tmp_path: Path) -> None:
    folder = tmp_path / "authorized"
    shutil.copytree(keys / "authorized", folder)
    (folder / "workers" / "broken.key").write_text("metadata\ncurve\n    public-key\n")
    server = curve_server(start_server, keys, curve_authorized=str(folder))
    with client(server, keys, "worker") as ps:
        assert ps.stats()
    (folder / "workers" / "worker.key").unlink()  # revoked: refused at its next connection
    with pytest.raises(zps.ServerUnreachable, match="refused this client's CURVE key"):
        client(server, keys, "worker", connect_timeout=1.0)


@pytest.mark.parametrize("key", ["#" * 40, "~" * 40, "not-a-key.key", ""])
def test_a_bad_key_argument_is_one_line(keys: Path, key: str) -> None:
    done = run_cli("zps.cli.zps_main", "stats", "tcp://127.0.0.1:1", "--timeout", "0.2",
                   "--curve-server-key", str(keys / "server.key"), "--curve-key", key or "x")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "curve_key" in done.stderr


def test_a_worker_key_cannot_become_the_standby(start_server, keys: Path) -> None:
    primary = curve_server(start_server, keys)
    rogue = curve_server(start_server, keys, standby_of=primary.address,
                         curve_key=str(keys / "worker.key_secret"),
                         curve_server_key=str(keys / "server.key"))
    wait_for(lambda: rogue.server.failed, what="the rogue standby to be refused")
    assert "may not register as a standby" in rogue.server.failed
    assert primary.run(lambda: primary.server.core.replica.standby) is None
    # Nor can it read the change stream: the PUB socket admits standby keys only.
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    for option, value in client_curve(keys / "server.key", keys / "worker.key_secret").items():
        sub.setsockopt(getattr(zmq, option), value)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    zap = primary.server._zap
    assert zap is not None
    refused = primary.run(lambda: zap.refusals)  # (before connecting: it may refuse at once)
    sub.connect(primary.run(lambda: primary.server.core.replica.pub_endpoint))
    wait_for(lambda: primary.run(lambda: zap.refusals) > refused,
             what="the change stream to refuse a worker key")
    sub.close(linger=0)
    context.term()


def test_curve_standby_replicates_and_takes_over(tmp_path: Path, keys: Path) -> None:
    curve = ["--curve-key", str(keys / "server.key_secret"),
             "--curve-authorized", str(keys / "authorized")]
    with LocalCluster(tmp_path) as cluster:
        cluster.start_servers(1, ["--mode", "async", *curve])
        cluster.start_standbys(["--mode", "async", *curve])
        with zps.Client(cluster.addresses, standbys=cluster.standby_addresses,
                        curve_server_key=str(keys / "server.key"),
                        curve_key=str(keys / "worker.key_secret")) as ps:
            ps.init({"w": np.zeros(16, np.float32)})
            wait_for(lambda: ps.stats()[0]["replica"]["standby"],
                     what="the standby to attach over CURVE")
            for _ in range(5):
                ps.push({"w": np.ones(16, np.float32)})
            cluster.kill_server(0)
            ps.push({"w": np.ones(16, np.float32)})
            np.testing.assert_array_equal(ps.pull()["w"], 6)
            assert ps.stats()[0]["epoch"] == 2


def test_curve_flag_mistakes_are_one_line(keys: Path) -> None:
    for args, message in (
        (["--curve-authorized", str(keys / "authorized")], "needs --curve-key"),
        (["--curve-key", str(keys / "server.key"), "--curve-authorized",
          str(keys / "authorized")], "holds only a public key"),
        (["--curve-key", str(keys / "server.key_secret"), "--curve-authorized", str(keys)],
         "none of the subfolders"),
    ):
        done = run_cli("zps.cli.server_main", "--bind", "tcp://127.0.0.1:0", *args)
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr


def test_zps_stats_with_an_observer_key(start_server, keys: Path) -> None:
    server = curve_server(start_server, keys)
    done = run_cli("zps.cli.zps_main", "stats", server.address, "--json",
                   "--curve-server-key", str(keys / "server.key"),
                   "--curve-key", str(keys / "observer.key_secret"))
    assert done.returncode == 0, done.stderr
    refused = run_cli("zps.cli.zps_main", "stats", server.address, "--timeout", "0.5")
    assert refused.returncode == 2 and "handshake" in refused.stderr


@pytest.mark.parametrize("role", sorted(ALLOWED))
@pytest.mark.parametrize("op", list(Op))
def test_the_role_table(role: str, op: Op) -> None:
    peer = Peer(role, "SHA256:k")
    request = Request(op, "c", 1, options={"role": role})
    allowed = op in ALLOWED[role]
    if allowed:
        check_access(peer, request)
        assert scoped(request, peer).client_id == "k/c"
    else:
        with pytest.raises(zps.ProtocolError, match="may not send"):
            check_access(peer, request)
    writes = {Op.INIT, Op.PUSH, Op.PUSH_PULL, Op.INIT_ROWS, Op.PUSH_ROWS, Op.PUSH_PULL_ROWS}
    assert not (allowed and role != "worker" and op in writes)


def test_a_hello_role_of_the_wrong_type_is_refused() -> None:
    request = Request(Op.HELLO, "c", 1, options={"role": ["worker"]})
    with pytest.raises(zps.ProtocolError, match="may not register"):
        check_access(Peer("worker", "SHA256:k"), request)


def test_keygen_cli_prints_fingerprints(tmp_path: Path) -> None:
    done = subprocess.run(["zps", "keygen", str(tmp_path / "k")], capture_output=True,
                          text=True, check=False) if shutil.which("zps") else \
        run_cli("zps.cli.zps_main", "keygen", str(tmp_path / "k"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("SHA256:") == 3 and "authorized as standby" in done.stdout


def test_one_flag_turns_curve_on_with_the_keygen_layout(start_server, keys: Path) -> None:
    server = start_server(mode="async", curve_key=str(keys / "server.key_secret"))
    with client(server, keys, "worker") as ps:
        assert ps.stats()
    with pytest.raises(zps.ServerUnreachable, match="handshake"):
        client(server, keys, None, connect_timeout=0.5)
