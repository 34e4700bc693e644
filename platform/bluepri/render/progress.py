"""Progress of a running render: rows done of total, images/s, time left."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


@dataclass
class Progress:
    """Counts blocks as they finish; says where the run is at most every `interval_s`."""

    total: int
    log: Callable[[str], None]
    interval_s: float = 5.0
    done: int = 0
    rendered: int = 0
    failed: int = 0
    started: float = field(default_factory=time.perf_counter)
    last_said: float = field(default_factory=time.perf_counter)

    def update(self, rendered: int, failed: int) -> None:
        self.rendered += rendered
        self.failed += failed
        self.done += rendered + failed
        now = time.perf_counter()
        if now - self.last_said >= self.interval_s or self.done >= self.total:
            self.last_said = now
            self.log(self.line())

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def images_per_s(self) -> float:
        return self.rendered / self.elapsed if self.elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.done / self.elapsed if self.elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta = duration(left) if left == left else "?"
        percent = 100 * self.done / self.total if self.total else 100.0
        return (
            f"render: {self.done}/{self.total} rows ({percent:.0f}%), {self.failed} failed, "
            f"{self.images_per_s:.2f} images/s, ETA {eta}"
        )
