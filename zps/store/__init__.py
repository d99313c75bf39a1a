"""Parameter storage: NumPy tables, versions, the change log, request deduplication and
snapshots (standby catch-up, checkpoint files)."""

from zps.store.dedup import DedupWindow
from zps.store.optimizers import OPTIMIZERS, Optimizer, make_optimizer, parse_optimizer
from zps.store.snapshot import (
    Snapshot,
    SnapshotError,
    TableState,
    latest_checkpoint,
    read_checkpoint,
    restore_store,
    snapshot_frames,
    snapshot_from_frames,
    take_snapshot,
    write_checkpoint,
)
from zps.store.tables import Change, Store, Table

__all__ = [
    "OPTIMIZERS",
    "Change",
    "DedupWindow",
    "Optimizer",
    "Snapshot",
    "SnapshotError",
    "Store",
    "Table",
    "TableState",
    "latest_checkpoint",
    "make_optimizer",
    "parse_optimizer",
    "read_checkpoint",
    "restore_store",
    "snapshot_frames",
    "snapshot_from_frames",
    "take_snapshot",
    "write_checkpoint",
]
