"""A small progress line for long runs: done/total, rate with units, elapsed and time left.

Writes to stderr; on a terminal it redraws one line, elsewhere (logs, CI) it prints a line at most
every `every_s` seconds, so logs stay short.
"""

import sys
import time


def format_seconds(seconds: float) -> str:
    """H:MM:SS for a duration in seconds ('?' when unknown)."""
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """progress = Progress(total, "certify", unit="img"); progress.update(k, extra="12.3k samples/s")."""

    def __init__(
        self,
        total: int,
        desc: str,
        *,
        unit: str = "it",
        done: int = 0,
        every_s: float = 5.0,
        stream=None,
    ):
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.done = self.start_done = done
        self.stream = sys.stderr if stream is None else stream
        self.start = self.last_print = time.perf_counter()
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.extra = ""

    def update(self, k: int = 1, *, extra: str | None = None) -> None:
        """Advances by k; `extra` (kept until replaced) is shown after the rate."""
        self.done += k
        if extra is not None:
            self.extra = extra
        now = time.perf_counter()
        if self.done >= self.total or now - self.last_print >= (0.2 if self.tty else self.every_s):
            self.last_print = now
            self._print(now, self.extra)

    def _print(self, now: float, extra: str) -> None:
        elapsed = now - self.start
        rate = (self.done - self.start_done) / elapsed if elapsed > 0 else float("nan")
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        line = (
            f"{self.desc}: {self.done}/{self.total} {self.unit} | {rate:.2f} {self.unit}/s | "
            f"elapsed {format_seconds(elapsed)} | left {format_seconds(left)}"
        )
        if extra:
            line += f" | {extra}"
        end = "\n" if not self.tty or self.done >= self.total else ""
        self.stream.write(("\r" if self.tty else "") + line + end)
        self.stream.flush()
