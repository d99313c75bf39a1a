"""The progress every built-in job shows: a bar per worker on a terminal, and a log line
every tenth of the run elsewhere (container logs do not want carriage returns)."""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType
from typing import Any

from tqdm import tqdm

LINES = 10  # log lines per run when stderr is not a terminal
# With ``--log-format json`` the daemons enable this logger, so every line is JSON.
log = logging.getLogger("zps.progress")


class LogLines:
    """The part of tqdm's interface the jobs use, as a log line every ``total / LINES``."""

    def __init__(self, name: str, total: int, unit: str) -> None:
        self._name, self._total, self._unit = name, total, unit
        self._every = max(1, total // LINES)
        self._done = 0
        self._postfix = ""
        self._start = time.perf_counter()

    def __enter__(self) -> LogLines:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is None and self._done % self._every:
            self._line()

    def update(self, n: int = 1) -> None:
        before, self._done = self._done, self._done + n
        if self._done // self._every > before // self._every:
            self._line()

    def set_postfix(self, **values: Any) -> None:
        self._postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def _line(self) -> None:
        seconds = time.perf_counter() - self._start
        say(f"{self._name}: {self._done}/{self._total} {self._unit}s "
            f"({100 * self._done // max(1, self._total)}%, {seconds:.1f} s)"
            f"{'; ' + self._postfix if self._postfix else ''}")


def say(line: str) -> None:
    """A progress line: to the log when it takes info lines (``--log-format json``),
    else to stderr as it is."""
    if log.isEnabledFor(logging.INFO):
        log.info(line)
    else:
        print(line, file=sys.stderr, flush=True)


def progress_bar(ctx: Any, total: int, unit: str = "step") -> tqdm | LogLines:
    """A bar of ``total`` ``unit``s for worker ``ctx.worker_index`` on a terminal, log
    lines elsewhere; nothing when ``ctx.progress`` is false."""
    name = f"worker {ctx.worker_index}"
    if ctx.progress and not sys.stderr.isatty():
        return LogLines(name, total, unit)
    return tqdm(total=total, desc=name, position=ctx.worker_index, disable=not ctx.progress,
                unit=unit, leave=True, dynamic_ncols=True)
