"""``zps keygen DIR``: the CURVE key pairs of a cluster, and the folder servers trust.

Without ``--name`` it writes the three pairs a cluster needs, ``server`` (every server and
standby shares it; workers are given its public half), ``worker`` and ``observer``, and
``DIR/authorized/{standbys,workers,observers}/`` holding the public keys each role may
connect with. ``--name NAME --role ROLE`` adds one more pair, authorized for ``ROLE``.
Keys are never overwritten.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from zps.curve import ROLE_FOLDERS, check_new, fingerprint, load_public, write_pair

FOLDER_OF = {role: folder for folder, role in ROLE_FOLDERS.items()}
# The pairs a new cluster gets, and the role each one's public key is authorized for.
CLUSTER_KEYS = (("server", "standby"), ("worker", "worker"), ("observer", "observer"))


def keygen(folder: Path, name: str | None = None, role: str = "worker") -> list[str]:
    """Write the key pairs and authorize them; one line per pair written (for printing)."""
    pairs = CLUSTER_KEYS if name is None else ((name, role),)
    for key_name, _ in pairs:  # all or nothing: a set is never written in part
        check_new(folder, key_name)
    authorized = folder / "authorized"
    for sub in ROLE_FOLDERS:
        (authorized / sub).mkdir(parents=True, exist_ok=True)
    lines = []
    for key_name, key_role in pairs:
        public, secret = write_pair(folder, key_name)
        shutil.copyfile(public, authorized / FOLDER_OF[key_role] / public.name)
        print_as = fingerprint(load_public(public, "key"))
        lines.append(f"{secret}  {print_as}  authorized as {key_role}")
    return lines
