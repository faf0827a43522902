"""Progress: a tqdm bar (rows, rows/s, ETA) on a terminal, plain lines otherwise (logs, CI, pods)."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class Progress:
    def __init__(self, total: int | None, done: int = 0, stream: TextIO | None = None,
                 every_seconds: float = 10.0, enabled: bool = True):
        self.stream = stream or sys.stderr
        self.total, self.done, self.enabled = total, done, enabled
        self.every = every_seconds
        self.started = self.last = time.monotonic()
        self.scored_here = 0
        self._bar: Any = None
        if enabled and self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=done, unit="rows", unit_scale=True,
                             file=self.stream, dynamic_ncols=True, smoothing=0.1)

    def advance(self, rows: int) -> None:
        self.done += rows
        self.scored_here += rows
        if self._bar is not None:
            self._bar.update(rows)
            return
        now = time.monotonic()
        if self.enabled and now - self.last >= self.every:
            self.last = now
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = self.scored_here / elapsed if elapsed > 0 else 0.0
        if self.total:
            left = max(self.total - self.done, 0)
            eta = f", ETA {left / rate:.0f}s" if rate > 0 else ""
            return (f"progress: {self.done}/{self.total} rows ({100 * self.done / self.total:.0f}%"
                    f"), {rate:,.0f} rows/s{eta}")
        return f"progress: {self.done} rows, {rate:,.0f} rows/s"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
