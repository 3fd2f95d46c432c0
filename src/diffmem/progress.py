"""Progress of long work on stderr: one line as each unit (a sweep cell, an EMM size, a timescales
snapshot, an audit criterion) finishes, with the elapsed time and, where the number of units is
known, an ETA from the mean time per unit so far:

    [3/8] lr-0.002: max ratio 0.412 [0.380, 0.444] (1m12s elapsed, ETA 2m00s)

Quiet with ``--no-progress``; by default on, except where the ``CI`` environment variable is set.
"""

from __future__ import annotations

import os
import sys
import time


def progress_enabled(flag: bool | None) -> bool:
    """``--progress/--no-progress``; unset: on, unless the ``CI`` environment variable is set."""
    if flag is not None:
        return bool(flag)
    return not os.environ.get("CI")


def duration(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3700`` -> ``1h01m``; ``9`` -> ``9s``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Counts finished units of ``total`` (None: unknown, then no ETA) and reports each on stderr
    (or through ``echo``) when ``enabled``."""

    def __init__(self, total: int | None, *, enabled: bool = True, echo=None, clock=time.monotonic):
        self.total, self.enabled, self.count = total, enabled, 0
        self.clock, self.start = clock, clock()
        self.echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))

    def eta(self) -> float | None:
        """Seconds left: the mean time per finished unit times the units left (None: unknown)."""
        if not self.total or not self.count:
            return None
        return (self.clock() - self.start) / self.count * max(self.total - self.count, 0)

    def done(self, text: str) -> str:
        """One more unit finished: its line (also echoed when enabled)."""
        self.count += 1
        elapsed = duration(self.clock() - self.start)
        eta = self.eta()
        where = f"[{self.count}/{self.total}]" if self.total else f"[{self.count}]"
        timing = f"{elapsed} elapsed" + (f", ETA {duration(eta)}" if eta is not None and self.count < self.total else "")
        line = f"{where} {text} ({timing})"
        if self.enabled:
            self.echo(line)
        return line
