"""Checkpoints of a running server: periodic, every N rounds, and one at shutdown.

A checkpoint is a frozen snapshot (the tables' buffers pinned, nothing copied on the event
loop) written by one thread: every write, the final one included, goes through the same
single-worker executor, so two writers never race over the folder. The hold on the
buffers ends when the file is on disk.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from zps.server.core import ServerCore
from zps.server.replica import SnapshotHold
from zps.store import freeze_snapshot, write_checkpoint

log = logging.getLogger("zps.server")


def check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and make sure a file can be written there (``OSError``
    saying why if not): found at start, not when the first checkpoint fails."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
    finally:
        probe.unlink(missing_ok=True)


class Checkpoints:
    """Writes ``core``'s checkpoints to ``folder``, one at a time."""

    def __init__(self, core: ServerCore, folder: Path) -> None:
        self.core = core
        self.folder = folder
        self.written = -1  # change number of the newest checkpoint written
        self.last_seconds = 0.0  # how long the last write took
        self.last_at = 0.0  # time.time() of the last write
        self._since = time.time()  # what the age counts from before the first write
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zps-ckpt")
        self._lock = asyncio.Lock()

    async def run(self, every: float, rounds: int, poll: float) -> None:
        """Checkpoint every ``every`` seconds, or every ``rounds`` sync rounds."""
        last_round = 0
        while True:
            await asyncio.sleep(every if every > 0 else poll)
            if every <= 0:
                closed = self.core.rounds.most_closed()
                if not rounds or closed - last_round < rounds:
                    continue
                last_round = closed
            try:
                await self.write()
            except OSError as exc:
                log.error("checkpoint not written: %s (the previous one is kept)", exc)

    async def write(self) -> Path | None:
        """Write a checkpoint now (waits for one in progress); None if nothing changed
        since the last one, or this server is not a primary."""
        async with self._lock:
            core = self.core
            if core.role != "primary" or core.store.seq == self.written:
                return None
            hold = SnapshotHold()
            snapshot = freeze_snapshot(core.store, core.epoch, core.extra_state(), hold)
            started = time.perf_counter()
            job = self._executor.submit(write_checkpoint, self.folder, snapshot)
            # The buffers stay frozen until the thread is done with them, even if this
            # coroutine is cancelled meanwhile.
            job.add_done_callback(lambda _: hold.release())
            path = await asyncio.wrap_future(job)
        self.written = snapshot.seq
        self.last_seconds = time.perf_counter() - started
        self.last_at = time.time()
        log.info("checkpoint %s written (change %d, %.2f s)", path, snapshot.seq,
                 self.last_seconds)
        return path

    def info(self) -> dict[str, Any]:
        """What ``stats`` says of checkpoints: the newest one's change number, age and
        write time, and the changes applied since."""
        return {"folder": str(self.folder), "seq": self.written,
                "age": round(time.time() - (self.last_at or self._since), 3),
                "seconds": round(self.last_seconds, 4),
                "unsaved": self.core.store.seq - max(self.written, 0)}

    def close(self) -> None:
        self._executor.shutdown(wait=True)
