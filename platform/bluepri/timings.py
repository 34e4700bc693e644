"""Where a run's wall time went: named phases on a monotonic clock, and a table for people.

Short runs are dominated by fixed costs (starting Ray and the worker group, loading models,
the first step's warm-up, validations), not by their steps; a run records its phases so a
user sees which, and benchmarks can compare them with other tools' (`bench/overhead.py`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class PhaseClock:
    """Seconds per named phase; a phase entered twice adds up.

    `lap(name)` books the time since the previous lap to `name`, less what `phase` and
    `add` booked in between: so a loop's remainder is one lap after its timed parts."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.last = time.perf_counter()
        self.booked_since_lap = 0.0

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.book(name, now - self.last - self.booked_since_lap)
        self.last, self.booked_since_lap = now, 0.0

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)

    def add(self, name: str, seconds: float) -> None:
        """A span the caller measured itself, inside the current lap."""
        self.book(name, seconds)
        self.booked_since_lap += max(0.0, seconds)

    def book(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + max(0.0, seconds)

    def as_dict(self) -> dict[str, float]:
        return {name: round(value, 3) for name, value in self.seconds.items()}


def timing_lines(timings: dict[str, float], total_key: str = "total") -> list[str]:
    """One line per phase with its share of the total, largest first; the total last."""
    total = timings.get(total_key) or sum(v for k, v in timings.items() if k != total_key)
    phases = sorted(((k, v) for k, v in timings.items() if k != total_key), key=lambda kv: -kv[1])
    width = max((len(k) for k, _ in phases), default=5)
    lines = [
        f"  {name:<{width}}  {seconds:8.2f} s  {100 * seconds / total:5.1f}%"
        for name, seconds in phases
        if total
    ]
    return [*lines, f"  {'total':<{width}}  {total:8.2f} s"]
