"""EventInbox: the hand-off from a worker thread (a RunFollower reading events.jsonl,
tui/follow.py) to the UI thread.

Events come by the thousand: a replayed history, a merge loop that reports thousands of times a
second. Posting a Textual message per event would flood the screen's queue, so events wait here
and the inbox posts one wake-up message per burst: the next message is posted only once the UI
has taken what was there. The UI applies every event (cheap) and the panels redraw on a timer
(bounded).
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from engine.events import Event

TimedEvent = tuple[float, Event]


class EventInbox:
    def __init__(self, wake: Callable[[], None], clock: Callable[[], float] = time.time) -> None:
        self._wake = wake  # posts a message to the screen; called from any thread
        self._clock = clock
        self._lock = threading.Lock()
        self._events: list[TimedEvent] = []
        self._wake_pending = False

    def put(self, event: Event, at: float | None = None) -> None:
        """From any thread (an ``emit``: one event, stamped now)."""
        self.put_many([(self._clock() if at is None else at, event)])

    def put_many(self, events: list[TimedEvent]) -> None:
        if not events:
            return
        with self._lock:
            self._events.extend(events)
            if self._wake_pending:
                return
            self._wake_pending = True
        self._wake()

    def take(self, limit: int | None = None) -> list[TimedEvent]:
        """On the UI thread: the waiting events, oldest first; at most ``limit`` of them (the
        rest wake the UI again, so that replaying a long file never blocks it for long)."""
        with self._lock:
            if limit is None or len(self._events) <= limit:
                events, self._events = self._events, []
                self._wake_pending = False
                return events
            events, self._events = self._events[:limit], self._events[limit:]
        self._wake()  # still pending: ask for another turn
        return events

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)
