"""What the app's thread workers share: wait without outliving a cancel (Textual cancels a
screen's workers when the screen or the app closes; a thread cannot be interrupted, so it looks
often)."""

from __future__ import annotations

import time

from textual.worker import Worker

STEP = 0.05  # seconds between two looks at is_cancelled


def wait_unless_cancelled(worker: Worker, seconds: float) -> bool:
    """Sleep up to ``seconds``; True if the worker was cancelled meanwhile."""
    deadline = time.monotonic() + seconds
    while not worker.is_cancelled:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(STEP, left))
    return True
