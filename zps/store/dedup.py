"""Remember which requests were applied, so a retry is applied once.

Keys are (client id, table): a push to several tables may be applied table by table (sync
rounds close per table), and a replica learns of each table's part separately.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class DedupWindow:
    """Per client, the most recent request ids that changed state, bounded in size.

    Clients number requests increasingly and retry only recent ones, so a window of the
    last ``per_client`` ids per client is enough to recognise every retry.
    """

    def __init__(self, per_client: int = 4096, max_clients: int = 65536) -> None:
        self._seen: OrderedDict[Hashable, OrderedDict[int, None]] = OrderedDict()
        self._per_client = per_client
        self._max_clients = max_clients

    def seen(self, client_id: Hashable, request_id: int) -> bool:
        """True if this request was already recorded."""
        ids = self._seen.get(client_id)
        return ids is not None and request_id in ids

    def record(self, client_id: Hashable, request_id: int) -> None:
        """Remember that this request changed state."""
        ids = self._seen.get(client_id)
        if ids is None:
            ids = self._seen[client_id] = OrderedDict()
            if len(self._seen) > self._max_clients:
                self._seen.popitem(last=False)
        else:
            self._seen.move_to_end(client_id)
        ids[request_id] = None
        if len(ids) > self._per_client:
            ids.popitem(last=False)

    def export(self) -> list[list[object]]:
        """The window as plain lists (for snapshots and checkpoints)."""
        return [[list(key) if isinstance(key, tuple) else key, list(ids)]
                for key, ids in self._seen.items()]

    @classmethod
    def restore(cls, rows: object, per_client: int = 4096,
                max_clients: int = 65536) -> DedupWindow:
        """A window holding what ``export`` returned; malformed rows raise ``ValueError``."""
        window = cls(per_client, max_clients)
        if not isinstance(rows, list):
            raise ValueError("dedup state must be a list")
        for row in rows:
            key, ids = row
            hashable = tuple(key) if isinstance(key, list) else key
            for rid in ids:
                window.record(hashable, int(rid))
        return window
