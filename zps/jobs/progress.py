"""The progress bar every built-in job shows (one line per worker on a terminal)."""

from __future__ import annotations

from typing import Any

from tqdm import tqdm


def progress_bar(ctx: Any, total: int, unit: str = "step") -> tqdm:
    """A bar of ``total`` ``unit``s for worker ``ctx.worker_index``; off when
    ``ctx.progress`` is false."""
    return tqdm(total=total, desc=f"worker {ctx.worker_index}", position=ctx.worker_index,
                disable=not ctx.progress, unit=unit, leave=True, dynamic_ncols=True)
