"""When a stage's next progress event is due, and the speed and ETA it reports.

The stages that loop over many items (data loading, encoding) share this clock, so every progress
event comes a few times a second at most and measures speed the same way: items over active
(unpaused) seconds since the stage began.
"""

from __future__ import annotations

import time
from typing import Callable

EVENT_INTERVAL = 0.2  # seconds between two progress events of one loop


class ProgressClock:
    def __init__(self, paused_so_far: Callable[[], float] = lambda: 0.0,
                 interval: float = EVENT_INTERVAL) -> None:
        self.paused_so_far, self.interval = paused_so_far, interval
        self.started, self.paused0 = time.monotonic(), paused_so_far()
        self.last = self.started  # the first event comes one interval in

    def elapsed(self) -> float:
        """Seconds since the clock started, paused time excluded."""
        return time.monotonic() - self.started - (self.paused_so_far() - self.paused0)

    def due(self) -> bool:
        """True (and the clock resets) when the last event is ``interval`` seconds old."""
        now = time.monotonic()
        if now - self.last < self.interval:
            return False
        self.last = now
        return True

    def rate(self, done: float) -> float:
        elapsed = self.elapsed()
        return round(done / elapsed, 1) if elapsed > 0 else 0.0

    def eta(self, done: float, total: float) -> float:
        """Seconds left at the speed so far; 0 when unknown or done."""
        rate = self.rate(done)
        return round(max(total - done, 0) / rate, 1) if rate > 0 and total else 0.0
