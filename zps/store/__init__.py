"""Parameter storage: NumPy tables, versions, the change log and request deduplication."""

from zps.store.dedup import DedupWindow
from zps.store.optimizers import OPTIMIZERS, Optimizer, make_optimizer, parse_optimizer
from zps.store.tables import Change, Store, Table

__all__ = [
    "OPTIMIZERS",
    "Change",
    "DedupWindow",
    "Optimizer",
    "Store",
    "Table",
    "make_optimizer",
    "parse_optimizer",
]
