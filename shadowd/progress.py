"""Progress for long work: a bar on a terminal, a plain line every quarter otherwise."""

from __future__ import annotations

import sys
import time


class Progress:
    """A progress bar on a terminal, a line every 25 % otherwise."""

    def __init__(self, total: int, stream=sys.stderr, label: str = "traffic") -> None:
        self.total = total
        self.label = label
        self.stream = stream
        self.tty = stream.isatty()
        self._next_mark = 0.25
        self._started = time.perf_counter()

    def update(self, done: int) -> None:
        fraction = done / self.total if self.total else 1.0
        rate = done / max(time.perf_counter() - self._started, 1e-9)
        if self.tty:
            filled = int(fraction * 30)
            bar = "#" * filled + "-" * (30 - filled)
            self.stream.write(f"\r  {self.label} [{bar}] {done}/{self.total} ({rate:,.0f} req/s)")
            if done >= self.total:
                self.stream.write("\n")
            self.stream.flush()
        elif fraction >= self._next_mark or done >= self.total:
            self.stream.write(f"  {self.label}: {done}/{self.total} requests ({rate:,.0f} req/s)\n")
            self._next_mark = fraction + 0.25
