"""deploy/ and the Grafana dashboard, checked without a cluster.

Kubernetes manifests are validated offline against a Kubernetes release's schema
(kubernetes-validate, strict: unknown fields are errors) and read for the topology they
describe; the Slurm script runs under bash with a fake srun and scontrol; every zps-server
and zps-worker command line and ZPS_* variable in the manifests, the compose file and the
Slurm script goes through the daemons' real option parsers; the dashboard's queries name
only metrics a real server exports.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import zps
from zps.cli import server_main, worker_main
from zps.cli.options import Option, UsageError

from .conftest import ROOT, python_env, wait_for

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed (pip install 'zps[dev]')")

K8S_VERSION = "1.33"  # a current release; its schema ships with kubernetes-validate
K8S_DIR = ROOT / "deploy" / "kubernetes"
SBATCH = ROOT / "deploy" / "slurm" / "zps.sbatch"
DASHBOARD = ROOT / "docker" / "grafana" / "zps-dashboard.json"
DAEMONS: dict[str, Any] = {"zps-server": server_main, "zps-worker": worker_main}
# Being added beside this file; until they land, only the checks that need them skip.
PENDING_FLAGS = {"zps-server": {"log-format", "curve-key", "curve-authorized",
                                "curve-server-key"},
                 "zps-worker": {"log-format", "curve-key", "curve-server-key"}}
PENDING_FAMILIES = {"zps_request_seconds", "zps_round_seconds", "zps_checkpoint_age_seconds",
                    "zps_checkpoint_seconds"}


# ------------------------------------------------------------ the daemons' own parsers


def options_of(program: str) -> tuple[Option, ...]:
    return tuple(DAEMONS[program].OPTIONS)


def flags_in(argv: Sequence[str]) -> list[str]:
    return [a[2:].split("=", 1)[0] for a in argv if a.startswith("--")]


def load(program: str, argv: Sequence[str], env: Mapping[str, str]) -> dict[str, Any]:
    """``program``'s settings from ``argv`` and ``env``, through its real ``load_config``;
    fails on a flag or ZPS_* variable it does not know, skips (after checking the rest)
    when the only unknown ones are flags still being added."""
    options = options_of(program)
    flags = {o.name for o in options} | {"config"}
    variables = {o.env for o in options if not o.flag_only} | {"ZPS_CONFIG"}
    unknown_flags = set(flags_in(argv)) - flags
    unknown_vars = {k for k in env if k.startswith("ZPS_")} - variables
    pending = {f for f in unknown_flags | {v[4:].lower().replace("_", "-")
                                           for v in unknown_vars}
               if f in PENDING_FLAGS[program]}
    assert unknown_flags <= pending, f"{program} has no flag {sorted(unknown_flags - pending)}"
    assert {v[4:].lower().replace("_", "-") for v in unknown_vars} <= pending, (
        f"{program} reads no variable {sorted(unknown_vars)}")
    argv, env = without(argv, env, pending)
    try:
        values = DAEMONS[program].load_config(list(argv), dict(env))[-1]
    except UsageError as exc:
        raise AssertionError(f"{program} {shlex.join(argv)}: {exc}") from None
    if pending:
        pytest.skip(f"{program} has no --{', --'.join(sorted(pending))} yet "
                    "(being added); the other settings parsed")
    return values  # type: ignore[no-any-return]


def without(argv: Sequence[str], env: Mapping[str, str],
            names: set[str]) -> tuple[list[str], dict[str, str]]:
    """``argv`` and ``env`` less the given options (each flag with its value)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg.startswith("--") and arg[2:].split("=", 1)[0] in names:
            skip = "=" not in arg
        else:
            kept.append(arg)
    variables = {"ZPS_" + n.upper().replace("-", "_") for n in names}
    return kept, {k: v for k, v in env.items() if k not in variables}


def flag(argv: Sequence[str], name: str) -> str:
    return argv[list(argv).index(f"--{name}") + 1]


# ------------------------------------------------------------ Kubernetes


def manifests() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def resource(kind: str, name: str) -> dict[str, Any]:
    matches = [d for _, d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}"
    return matches[0]


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert all("namespace" not in d["metadata"] for _, d in manifests())  # any namespace


@pytest.mark.parametrize(("source", "doc"), manifests(),
                         ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in manifests()])
def test_manifest_validates_against_the_kubernetes_schema(source: str, doc: dict) -> None:
    assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("breakage", ["replicas as text", "a misspelt field", "no name"])
def test_the_validator_rejects_a_broken_manifest(breakage: str) -> None:
    doc = copy.deepcopy(resource("StatefulSet", "zps-primary"))
    container = doc["spec"]["template"]["spec"]["containers"][0]
    if breakage == "replicas as text":
        doc["spec"]["replicas"] = "two"
    elif breakage == "a misspelt field":
        container["comand"] = container.pop("command")
    else:
        del container["name"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def container_env(container: dict[str, Any], fields: Mapping[str, str]) -> dict[str, str]:
    """A container's environment as the kubelet builds it: its ConfigMaps, then ``env``
    with ``$(VAR)`` references expanded; ``fields`` gives the downward API's values."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(resource("ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = expand(item["value"], env)
        else:
            env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def expand(text: str, env: Mapping[str, str]) -> str:
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: env.get(m.group(1), m.group(0)), text)


def container_argv(container: dict[str, Any], env: Mapping[str, str]) -> tuple[str, list[str]]:
    """(program, its arguments) of a container; ``sh -c SCRIPT NAME ARGS`` wrappers must end
    in ``exec PROGRAM "$@"``, and the flags the script adds count as arguments."""
    command, args = container["command"], [expand(a, env) for a in container.get("args", [])]
    if command[0] in DAEMONS:
        return command[0], [*command[1:], *args]
    assert command[:2] == ["/bin/sh", "-c"], f"unexpected command {command}"
    script, program = command[2], command[3]
    assert f'exec {program} "$@"' in script
    added = [w for w in shlex.split(script, comments=True) if re.match(r"--[a-z]", w)]
    return program, [*args, *[part for f in added for part in (f, "x")]]


POD_INDEX = "metadata.labels['apps.kubernetes.io/pod-index']"
JOB_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def server_pods() -> Iterator[tuple[str, int, dict[str, Any], list[str], dict[str, str]]]:
    """(StatefulSet, pod index, container, argv, env) of every server pod."""
    for name in ("zps-primary", "zps-standby"):
        doc = resource("StatefulSet", name)
        for index in range(doc["spec"]["replicas"]):
            container = pod_spec(doc)["containers"][0]
            env = container_env(container, {POD_INDEX: str(index)})
            program, argv = container_argv(container, env)
            assert program == "zps-server"
            yield name, index, container, argv, env


def test_server_pods_parse_with_zps_server_options() -> None:
    for name, index, _, argv, env in server_pods():
        values = load("zps-server", argv, env)
        expected = f"tcp://zps-primary-{index}.zps:5570" if name == "zps-standby" else ""
        assert values["standby_of"] == expected
        assert values["checkpoint_dir"] and values["checkpoint_every"] > 0
        assert values["metrics_bind"].endswith(":9100") and values["log_format"] == "json"
        assert values["curve_key"] and values["curve_authorized"]


def test_a_primary_resumes_from_its_checkpoint_volume() -> None:
    container = pod_spec(resource("StatefulSet", "zps-primary"))["containers"][0]
    script, args = container["command"][2], container["args"]
    folder = flag(args, "checkpoint-dir")
    assert f"--restore {folder}" in script and f"{folder}/ckpt-*.zps" in script
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    claims = {t["metadata"]["name"] for t in
              resource("StatefulSet", "zps-primary")["spec"]["volumeClaimTemplates"]}
    assert mounts[folder] in claims
    env = container_env(container, {})
    load("zps-server", [*args, "--restore", folder], env)


def test_workers_are_an_indexed_job_over_the_primaries_and_their_standbys() -> None:
    job = resource("Job", "zps-worker")
    primaries, standbys = (resource("StatefulSet", n) for n in ("zps-primary", "zps-standby"))
    count = job["spec"]["completions"]
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["parallelism"] == count
    servers = primaries["spec"]["replicas"]
    assert standbys["spec"]["replicas"] == servers
    container = pod_spec(job)["containers"][0]
    for index in range(count):
        env = container_env(container, {JOB_INDEX: str(index)})
        program, argv = container_argv(container, env)
        values = load(program, argv, {**env, "JOB_COMPLETION_INDEX": str(index)})
        assert program == "zps-worker" and int(values["worker_index"]) == index
        assert values["num_workers"] == count and values["client_id"] == f"worker-{index}"
        assert values["servers"] == ",".join(f"tcp://zps-primary-{k}.zps:5570"
                                             for k in range(servers))
        assert values["standbys"] == ",".join(f"tcp://zps-standby-{k}.zps:5570"
                                              for k in range(servers))
    server_env = container_env(pod_spec(primaries)["containers"][0], {})
    assert int(server_env["ZPS_WORKERS"]) == count  # the first sync round waits for all


def test_the_headless_service_names_every_server_pod() -> None:
    service = resource("Service", "zps")
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    selector = service["spec"]["selector"].items()
    for name in ("zps-primary", "zps-standby"):
        doc = resource("StatefulSet", name)
        labels = doc["spec"]["template"]["metadata"]["labels"]
        assert doc["spec"]["serviceName"] == "zps" and selector <= labels.items()
        assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items()
    worker_labels = resource("Job", "zps-worker")["spec"]["template"]["metadata"]["labels"]
    assert not selector <= worker_labels.items()
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    for *_, argv, _ in server_pods():
        assert flag(argv, "bind").endswith(f":{ports['zps']}")
        assert flag(argv, "pub-bind").endswith(f":{ports['changes']}")
        assert flag(argv, "metrics-bind").endswith(f":{ports['metrics']}")


def test_probes_check_the_metrics_endpoint_and_the_socket() -> None:
    for _, _, container, argv, _ in server_pods():
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        metrics_port = int(flag(argv, "metrics-bind").rsplit(":", 1)[1])
        for probe in ("livenessProbe", "startupProbe"):
            get = container[probe]["httpGet"]
            assert get["path"] == "/metrics" and ports[get["port"]] == metrics_port
        assert ports[container["readinessProbe"]["tcpSocket"]["port"]] == 5570


def secret_items(doc: dict[str, Any], container: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """(mount path, {file path in the volume: Secret key}) of the container's CURVE volume."""
    volumes = {v["name"]: v for v in pod_spec(doc).get("volumes", [])}
    for mount in container["volumeMounts"]:
        secret = volumes.get(mount["name"], {}).get("secret")
        if secret is not None:
            assert secret["secretName"] == "zps-curve"
            return mount["mountPath"], {i["path"]: i["key"] for i in secret["items"]}
    raise AssertionError("no Secret mounted")


def pods_with_keys() -> Iterator[tuple[dict[str, Any], dict[str, Any], list[str]]]:
    for kind, name in (("StatefulSet", "zps-primary"), ("StatefulSet", "zps-standby"),
                       ("Job", "zps-worker")):
        doc = resource(kind, name)
        container = pod_spec(doc)["containers"][0]
        env = container_env(container, {POD_INDEX: "0", JOB_INDEX: "0"})
        yield doc, container, container_argv(container, env)[1]


def test_curve_flags_point_into_the_mounted_secret() -> None:
    for doc, container, argv in pods_with_keys():
        mount, items = secret_items(doc, container)
        for name in ("curve-key", "curve-server-key", "curve-authorized"):
            if f"--{name}" in argv:
                path = Path(flag(argv, name)).relative_to(mount).as_posix()
                assert path in items or any(p.startswith(path + "/") for p in items), path
        volumes = {m["name"] for m in container["volumeMounts"]}
        assert volumes <= {v["name"] for v in pod_spec(doc)["volumes"]} | {
            t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])}


def test_the_secret_rebuilds_what_zps_keygen_writes(tmp_path: Path) -> None:
    keygen = pytest.importorskip("zps.cli.keygen", reason="zps keygen is being added")
    keygen.keygen(tmp_path)
    files = {p.name for p in tmp_path.iterdir() if p.is_file()}  # kubectl --from-file=DIR
    authorized = {p.relative_to(tmp_path).as_posix()
                  for p in (tmp_path / "authorized").rglob("*") if p.is_file()}
    for doc, container, argv in pods_with_keys():
        _, items = secret_items(doc, container)
        assert set(items.values()) <= files, "a Secret key that zps keygen does not write"
        for path, key in items.items():
            assert (tmp_path / key).read_bytes() == (tmp_path / path).read_bytes(), path
        if "--curve-authorized" in argv:
            assert {p for p in items if p.startswith("authorized/")} == authorized


# ------------------------------------------------------------ docker-compose


def test_compose_services_parse_with_the_daemons_options() -> None:
    from .test_docker import compose

    result = compose("--profile", "monitoring", "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    daemons = {n: s for n, s in services.items() if (s.get("command") or [""])[0] in DAEMONS}
    assert {s["command"][0] for s in daemons.values()} == set(DAEMONS)
    for name, service in daemons.items():
        program, argv = service["command"][0], service["command"][1:]
        env = {k: v for k, v in service["environment"].items() if v is not None}
        values = load(program, argv, env)
        if name == "standby":
            assert values["standby_of"] == "tcp://server:5570"
        if program == "zps-worker":
            assert values["standbys"] == "tcp://standby:5570"


# ------------------------------------------------------------ Slurm


def test_the_sbatch_script_is_valid_bash() -> None:
    result = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = SBATCH.read_text()
    assert text.startswith("#!/bin/bash\n") and "#SBATCH --ntasks" in text
    used = set(re.findall(r"\bZPS_[A-Z_]+", text))
    known = {o.env for p in DAEMONS for o in options_of(p)}
    pending = {"ZPS_" + f.upper().replace("-", "_") for p in DAEMONS for f in PENDING_FLAGS[p]}
    assert used <= known | pending, f"no option reads {sorted(used - known - pending)}"


FAKE_SRUN = '''#!{python}
"""srun for tests: logs each step (options, command, ZPS_* variables) as a JSON line.
With FAKE_SRUN_RUN set it runs the step's tasks as local processes (SLURM_PROCID,
SLURM_NTASKS set, SIGTERM passed on); without, a zps-server step writes its --ready-file
and waits for SIGTERM, and any other step exits at once."""
import json, os, signal, subprocess, sys, time
args = sys.argv[1:]
opts = {{}}
while args[0].startswith("-"):
    key, _, value = args.pop(0).partition("=")
    opts[key] = value
def log(**entry):
    with open(os.environ["FAKE_SRUN_LOG"], "a") as out:
        out.write(json.dumps(entry) + "\\n")
log(opts=opts, argv=args, env={{k: v for k, v in os.environ.items() if k.startswith("ZPS_")}})
if os.environ.get("FAKE_SRUN_RUN"):
    n = int(opts.get("--ntasks", "1"))
    out = open(opts["--output"], "ab") if "--output" in opts else None
    tasks = [subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT if out else None,
                              env={{**os.environ, "SLURM_PROCID": str(i), "SLURM_NTASKS": str(n)}})
             for i in range(n)]
    signal.signal(signal.SIGTERM, lambda *_: [t.terminate() for t in tasks])
    codes = [t.wait() for t in tasks]
    log(stopped=args, codes=codes)
    sys.exit(max(codes))
if args[0] == "zps-server":
    signal.signal(signal.SIGTERM, lambda *_: (log(stopped=args), sys.exit(0)))
    ready = args[args.index("--ready-file") + 1]
    with open(ready + ".tmp", "w") as out:
        out.write("tcp://0.0.0.0:%d" % (20000 + os.getpid() % 40000))
    os.replace(ready + ".tmp", ready)
    signal.pause()  # a server until the script stops it (SIGTERM)
'''
SHIM = '#!/bin/sh\nexec {python} -m {module} "$@"\n'


def run_sbatch(tmp_path: Path, ntasks: int, nodes: Sequence[str],
               extra: Mapping[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str],
                                                                  list[dict[str, Any]]]:
    """Run zps.sbatch as Slurm would in an allocation of ``ntasks`` tasks on ``nodes``, with
    fake srun and scontrol (and zps-server, zps-worker from this checkout); its result and
    the steps srun was asked for."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text(FAKE_SRUN.format(python=sys.executable))
    (fake / "scontrol").write_text('#!/bin/sh\n[ "$1 $2" = "show hostnames" ] && '
                                   'printf "%s\\n" $FAKE_NODES\n')
    for program, module in DAEMONS.items():
        (fake / program).write_text(SHIM.format(python=sys.executable, module=module.__name__))
    for script in fake.iterdir():
        script.chmod(0o755)
    env = {k: v for k, v in python_env().items() if not k.startswith(("ZPS_", "SLURM_"))}
    env.update(PATH=f"{fake}{os.pathsep}{env['PATH']}", FAKE_SRUN_LOG=str(tmp_path / "steps"),
               FAKE_NODES=" ".join(nodes), SLURM_JOB_ID="77", SLURM_NTASKS=str(ntasks),
               SLURM_JOB_NODELIST="node[1-2]", SLURM_SUBMIT_DIR=str(tmp_path),
               SLURM_CPUS_PER_TASK="2", **(extra or {}))
    result = subprocess.run(["bash", str(SBATCH)], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    log = tmp_path / "steps"
    steps = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return result, steps


def test_the_sbatch_script_starts_pairs_then_workers(tmp_path: Path) -> None:
    result, steps = run_sbatch(tmp_path, 8, ["node1", "node2"])
    assert result.returncode == 0, result.stderr
    servers = [s for s in steps if s.get("argv", [""])[0] == "zps-server"]
    workers = [s for s in steps if s.get("argv", [""])[0] == "zps-worker"]
    assert len(servers) == 4 and len(workers) == 1
    ready = {Path(flag(s["argv"], "ready-file")).stem: s for s in servers}
    addresses = {}
    for name, step in ready.items():
        port = (tmp_path / "zps-77" / f"{name}.addr").read_text().rsplit(":", 1)[1]
        addresses[name] = f"tcp://{step['opts']['--nodelist']}:{port}"
    for k in range(2):
        primary, standby = ready[f"primary-{k}"], ready[f"standby-{k}"]
        assert flag(standby["argv"], "standby-of") == addresses[f"primary-{k}"]
        assert primary["opts"]["--nodelist"] != standby["opts"]["--nodelist"]
    for step in servers:
        values = load("zps-server", step["argv"][1:], step["env"])
        assert values["workers"] == 4 and values["log_format"] == "json"
    worker = workers[0]
    assert worker["opts"]["--ntasks"] == "4"
    assert worker["env"]["ZPS_SERVERS"] == f"{addresses['primary-0']},{addresses['primary-1']}"
    assert worker["env"]["ZPS_STANDBYS"] == f"{addresses['standby-0']},{addresses['standby-1']}"
    for rank in range(4):  # the ranks srun gives the worker step's tasks
        slurm = {"SLURM_PROCID": str(rank), "SLURM_NTASKS": "4"}
        values = load("zps-worker", worker["argv"][1:], {**worker["env"], **slurm})
        assert int(values["worker_index"]) == rank and values["num_workers"] == 4
    stopped = sorted(flag(s["stopped"], "ready-file") for s in steps if "stopped" in s)
    assert stopped == sorted(flag(s["argv"], "ready-file") for s in servers)


def test_the_sbatch_script_passes_curve_keys_on(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    result, steps = run_sbatch(tmp_path, 5, ["node1"],
                               {"CURVE_DIR": str(keys), "PRIMARIES": "1", "METRICS_PORT": ""})
    assert result.returncode == 0, result.stderr
    servers = [s for s in steps if s.get("argv", [""])[0] == "zps-server"]
    (worker,) = [s for s in steps if s.get("argv", [""])[0] == "zps-worker"]
    for step in servers:
        assert flag(step["argv"], "curve-key") == f"{keys}/server.key_secret"
        assert flag(step["argv"], "curve-authorized") == f"{keys}/authorized"
        assert "--metrics-bind" not in step["argv"]
    assert worker["env"]["ZPS_CURVE_KEY"] == f"{keys}/worker.key_secret"
    assert worker["env"]["ZPS_CURVE_SERVER_KEY"] == f"{keys}/server.key"
    assert worker["opts"]["--ntasks"] == "3"
    load("zps-worker", worker["argv"][1:], {**worker["env"], "SLURM_PROCID": "2"})


def test_the_sbatch_script_trains_with_real_daemons(tmp_path: Path) -> None:
    """The whole script for real on one machine: two primaries, their standbys on the other
    "node" (127.0.0.1 and localhost), two workers; the servers stopped at the end write
    their final checkpoints."""
    result, steps = run_sbatch(tmp_path, 6, ["127.0.0.1", "localhost"], {
        "FAKE_SRUN_RUN": "1", "METRICS_PORT": "", "ZPS_JOB": "digits-softmax",
        "ZPS_EPOCHS": "1", "ZPS_QUIET": "true", "ZPS_CONNECT_TIMEOUT": "30"})
    logs = tmp_path / "zps-77" / "logs"
    assert result.returncode == 0, result.stderr + "".join(
        f"\n{p.name}: {p.read_text()[-2000:]}" for p in logs.glob("*.log"))
    (worker,) = [s for s in steps if s.get("stopped") == ["zps-worker", "--log-format", "json"]
                 and "codes" in s]
    assert worker["codes"] == [0, 0] and result.stderr.count("test accuracy") == 2
    for name in ("primary-0", "primary-1", "standby-0", "standby-1"):
        first = (logs / f"{name}.log").read_text().splitlines()[0]
        assert json.loads(first)  # --log-format json
    for k in range(2):
        assert list((tmp_path / "zps-77" / "checkpoints" / f"primary-{k}").glob("ckpt-*.zps"))


def test_the_sbatch_script_refuses_an_allocation_without_workers(tmp_path: Path) -> None:
    result, steps = run_sbatch(tmp_path, 4, ["node1"])
    assert result.returncode == 2 and "no worker" in result.stderr and not steps


# ------------------------------------------------------------ the Grafana dashboard


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def queries() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def test_the_dashboard_is_well_formed() -> None:
    board = dashboard()
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "instance"} <= variables
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"]
            assert all(t["expr"] and 'instance=~"$instance"' in t["expr"]
                       for t in panel["targets"])


def exported_samples(start_server: Any, tmp_path: Path) -> set[str]:
    """Names of every sample a primary (sync rounds, a dense and a row table, a checkpoint)
    and its standby export on /metrics."""
    from .test_metrics import scrape

    primary = start_server(mode="sync", workers=1, metrics_bind="127.0.0.1:0",
                           checkpoint_dir=str(tmp_path))
    standby = start_server(mode="sync", workers=1, metrics_bind="127.0.0.1:0",
                           standby_of=primary.address)
    with zps.Client([primary.address], client_id="w0") as ps:
        ps.init({"w": np.zeros(64, np.float32)})
        for _ in range(3):
            ps.push_pull({"w": np.ones(64, np.float32)})
        ps.init_rows("emb", dim=4)
        ps.push_rows("emb", np.arange(3), np.ones((3, 4), np.float32))
        ps.pull(["w"])
    primary.call(primary.server.checkpoint())
    wait_for(lambda: primary.run(lambda: primary.server.core.replica.standby is not None),
             what="the standby to attach")
    names: set[str] = set()
    for server in (primary, standby):
        names |= {name for name, _ in scrape(server.server.metrics.address)}
    return names


def test_the_dashboard_queries_only_exported_metrics(start_server: Any, tmp_path: Path) -> None:
    exported = exported_samples(start_server, tmp_path)
    queried = {n for q in queries() for n in re.findall(r"\bzps_[a-z0-9_]+", q)}
    missing = queried - exported
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in missing}
    assert families <= PENDING_FAMILIES, f"not exported: {sorted(missing)}"
    for family in PENDING_FAMILIES:
        assert any(n.startswith(family) for n in queried), f"no panel for {family}"
    shown = {re.sub(r"_(bucket|sum|count|total)$", "", n) for n in queried}
    unshown = {re.sub(r"_(bucket|sum|count|total)$", "", n) for n in exported} - shown
    assert not unshown, f"exported but on no panel: {sorted(unshown)}"
    if missing:
        pytest.skip(f"the server does not export {', '.join(sorted(families))} yet (being "
                    "added); every other query names an exported metric")


def test_prometheus_scrapes_the_compose_servers() -> None:
    config = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for group in job["static_configs"]
               for t in group["targets"]}
    from .test_docker import compose

    services = json.loads(compose("config", "--format", "json").stdout)["services"]
    servers = {n for n, s in services.items() if s["command"][0] == "zps-server"}
    assert servers == {"server", "standby"}
    metrics = {f"{n}:{services[n]['environment']['ZPS_METRICS_BIND'].rsplit(':', 1)[1]}"
               for n in servers}
    assert targets == metrics
