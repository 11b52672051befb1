"""A one-line progress bar for epochs (redrawn on a terminal, sparse lines in logs)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """``label [#####.....] 12/40 loss 1.23 lr 0.01 ... 3.1s``.

    On a terminal the line is redrawn at most ``refresh`` times a second; elsewhere (CI logs,
    files) only every ``log_every`` steps and at the end, so logs stay short.
    """

    def __init__(
        self, label: str, total: int, stream: TextIO | None = None, refresh: float = 4.0, log_every: int = 50
    ):
        self.label, self.total = label, total
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.min_interval = 1.0 / refresh
        self.log_every = log_every
        self.started = self._last = time.monotonic()
        self.done = 0

    def update(self, done: int, fields: dict[str, float | str]) -> None:
        self.done = done
        now = time.monotonic()
        last = done >= self.total
        if self.tty and (last or now - self._last >= self.min_interval):
            self._last = now
            self.stream.write("\r" + self._line(fields) + ("\n" if last else ""))
            self.stream.flush()
        elif not self.tty and (last or done % self.log_every == 0):
            self.stream.write(self._line(fields) + "\n")
            self.stream.flush()

    def _line(self, fields: dict[str, float | str]) -> str:
        width = 20
        filled = int(width * self.done / max(1, self.total))
        text = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
        elapsed = time.monotonic() - self.started
        return f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {text} {elapsed:.1f}s"
