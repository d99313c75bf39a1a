"""Which worker this is, from the launcher that started it (sans-IO, at the CLI edge).

Explicit settings win (``--worker-index``/``--num-workers``, ``ZPS_*`` variables, the
config file); then, in this order: ``TF_CONFIG`` (its worker and chief tasks, and its ps
tasks as the servers), torchrun's ``RANK``/``WORLD_SIZE``, a Kubernetes Indexed Job's
``JOB_COMPLETION_INDEX``, Volcano's ``VC_TASK_INDEX``, Slurm's ``SLURM_PROCID``/
``SLURM_NTASKS``. Index-only launchers leave the worker count to the settings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from zps.cli.options import UsageError


@dataclass(frozen=True, slots=True)
class Launch:
    """What one launcher says: this worker's index, the worker count, the servers (each
    None when it does not say), and the variable it was read from."""

    source: str
    worker_index: int | None = None
    num_workers: int | None = None
    servers: str | None = None


def from_launcher(environ: Mapping[str, str]) -> Launch | None:
    """The first launcher whose variables are set, or None."""
    if "TF_CONFIG" in environ:
        return _tf_config(environ["TF_CONFIG"])
    if "RANK" in environ and "WORLD_SIZE" in environ:
        return Launch("RANK/WORLD_SIZE (torchrun)", _int(environ, "RANK"),
                      _int(environ, "WORLD_SIZE"))
    if "JOB_COMPLETION_INDEX" in environ:
        return Launch("JOB_COMPLETION_INDEX (Kubernetes)", _int(environ, "JOB_COMPLETION_INDEX"))
    if "VC_TASK_INDEX" in environ:
        return Launch("VC_TASK_INDEX (Volcano)", _int(environ, "VC_TASK_INDEX"))
    if "SLURM_PROCID" in environ:
        count = _int(environ, "SLURM_NTASKS") if "SLURM_NTASKS" in environ else None
        return Launch("SLURM_PROCID/SLURM_NTASKS (Slurm)", _int(environ, "SLURM_PROCID"),
                      count)
    return None


def _int(environ: Mapping[str, str], name: str) -> int:
    try:
        value = int(environ[name])
    except ValueError:
        raise UsageError(f"{name}={environ[name]!r} must be an integer") from None
    if value < 0:
        raise UsageError(f"{name}={value} must be >= 0")
    return value


def _tf_config(text: str) -> Launch:
    """TensorFlow's cluster spec: workers are its chief (index 0) and worker tasks (after
    the chief), servers its ps tasks."""
    try:
        spec = json.loads(text)
        cluster, task = spec.get("cluster", {}), spec.get("task", {})
        chiefs, workers = list(cluster.get("chief", [])), list(cluster.get("worker", []))
        kind, index = task.get("type"), int(task.get("index", 0))
        ps = [str(a) for a in cluster.get("ps", [])]
    except (ValueError, AttributeError, TypeError):
        raise UsageError("TF_CONFIG is not a cluster spec: expected JSON like "
                         '{"cluster": {"worker": [...], "ps": [...]}, '
                         '"task": {"type": "worker", "index": 0}}') from None
    if kind not in ("chief", "worker"):
        raise UsageError(f"TF_CONFIG's task is a {kind!r} task; zps-worker runs worker or "
                         "chief tasks (start zps-server for ps tasks)")
    position = index if kind == "chief" else len(chiefs) + index
    servers = ",".join(a if "://" in a else f"tcp://{a}" for a in ps) or None
    return Launch("TF_CONFIG", position, len(chiefs) + len(workers) or None, servers)
