"""Progress as log lines, for long steps whose output goes to a file or pipe (where the transient
progress bars of :mod:`deepcluster.core.progress` show nothing): ``what i/n, t s, about r s left``,
at most one line every few seconds."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["ProgressLog", "duration"]


def duration(seconds: float) -> str:
    """``42 s``, ``3.5 min`` or ``1.2 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class ProgressLog:
    """Calls ``log`` with ``"<what> i/n <unit>, t s, about r s left"`` when :meth:`update` is told
    that ``i`` of ``total`` items are done, at most once every ``every`` seconds and never for the
    last item (the caller reports the result). ``log=None``: does nothing."""

    def __init__(self, log: Callable[[str], None] | None, what: str, total: int, *, unit: str = "",
                 every: float = 10.0) -> None:
        self.log, self.what, self.total, self.unit, self.every = log, what, total, unit, every
        self.start = self.last = time.perf_counter()

    def update(self, done: int) -> None:
        if self.log is None or done <= 0 or done >= self.total:
            return
        now = time.perf_counter()
        if now - self.last < self.every:
            return
        self.last = now
        spent = now - self.start
        left = spent / done * (self.total - done)
        unit = f" {self.unit}" if self.unit else ""
        self.log(f"{self.what}: {done}/{self.total}{unit}, {duration(spent)}, about {duration(left)} left")
