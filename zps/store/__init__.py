"""Parameter storage: NumPy tables, versions, the change log and request deduplication."""

from zps.store.dedup import DedupWindow
from zps.store.tables import Change, Store, Table

__all__ = ["Change", "DedupWindow", "Store", "Table"]
