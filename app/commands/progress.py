"""A progress bar on stderr for long operations (bulk requeue, large imports).

On a terminal it redraws one line; otherwise (logs, CI) it prints a line every tenth of the
way, so long runs show life without flooding. Short operations print nothing.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 30
MIN_TOTAL = 200     # below this an operation is quick enough to need no progress output


class Progress:
    def __init__(self, label: str, total: int, stream: TextIO | None = None) -> None:
        self.label, self.total, self.done = label, total, 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.enabled = total >= MIN_TOTAL
        self.started = time.monotonic()
        self._last_tenth = 0

    def advance(self, count: int = 1) -> None:
        self.done = min(self.total, self.done + count)
        if not self.enabled:
            return
        if self.tty:
            self._draw("\r")
            return
        tenth = self.done * 10 // self.total
        if tenth > self._last_tenth:
            self._last_tenth = tenth
            self._draw("")
            self.stream.write("\n")

    def close(self) -> None:
        if self.enabled and self.tty:
            self._draw("\r")
            self.stream.write("\n")
        self.stream.flush()

    def _draw(self, prefix: str) -> None:
        filled = WIDTH * self.done // self.total
        rate = self.done / max(time.monotonic() - self.started, 1e-9)
        self.stream.write(f"{prefix}{self.label} [{'#' * filled}{'.' * (WIDTH - filled)}] "
                          f"{self.done}/{self.total} ({rate:,.0f}/s)")
        self.stream.flush()
