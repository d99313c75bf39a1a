"""Parameter storage: tables with versions, the numbered change log, request identity,
snapshots and checkpoint files."""

from zps.store.checkpoint import latest_checkpoint, read_checkpoint, write_checkpoint
from zps.store.errors import (
    BadIds,
    BadOptimizer,
    BadRowSpec,
    RequestWindowError,
    StoreError,
    TableConflict,
    TableMismatch,
    UnknownTable,
)
from zps.store.identity import APPLIED, NEW, RequestLedger
from zps.store.optimizers import OPTIMIZERS, Optimizer, make_optimizer, parse_optimizer
from zps.store.snapshot import (
    Snapshot,
    SnapshotError,
    TableState,
    freeze_snapshot,
    restore_store,
    snapshot_frames,
    snapshot_from_frames,
    take_snapshot,
)
from zps.store.store import Change, Requests, Store
from zps.store.tables import DenseTable, Reader, Table

__all__ = [
    "APPLIED",
    "NEW",
    "OPTIMIZERS",
    "BadIds",
    "BadOptimizer",
    "BadRowSpec",
    "Change",
    "DenseTable",
    "Optimizer",
    "Reader",
    "RequestLedger",
    "RequestWindowError",
    "Requests",
    "Snapshot",
    "SnapshotError",
    "Store",
    "StoreError",
    "Table",
    "TableConflict",
    "TableMismatch",
    "TableState",
    "UnknownTable",
    "freeze_snapshot",
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
