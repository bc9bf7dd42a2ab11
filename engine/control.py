"""RunControl: pause, resume and stop, from any thread, checked by the engine at safe points.

The engine calls ``checkpoint()`` between batches and between phases: it blocks while paused and
returns True once a stop was requested. Code that must act at the moment of a change (the
tokenizer stage sends SIGSTOP/SIGCONT to its child) registers a listener.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

Listener = Callable[[str], None]  # called with "paused", "resumed" or "stopped"


class RunControl:
    def __init__(self) -> None:
        self._running = threading.Event()  # set = not paused
        self._running.set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._paused_at: float | None = None
        self.paused_seconds = 0.0  # total time spent paused, for ETAs that exclude it

    # --- commands (any thread) ---

    def pause(self) -> None:
        with self._lock:
            if not self._running.is_set() or self._stop.is_set():
                return
            self._running.clear()
            self._paused_at = time.monotonic()
        self._notify("paused")

    def resume(self) -> None:
        with self._lock:
            if self._running.is_set():
                return
            self._account_pause()
            self._running.set()
        self._notify("resumed")

    def stop(self) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            self._stop.set()
            self._account_pause()
            self._running.set()  # a paused run must wake up to stop
        self._notify("stopped")

    # --- state ---

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def paused_so_far(self) -> float:
        """Paused seconds including a pause in progress."""
        with self._lock:
            extra = time.monotonic() - self._paused_at if self._paused_at is not None else 0.0
            return self.paused_seconds + extra

    # --- engine side ---

    def checkpoint(self) -> bool:
        """Block while paused; True when the run should stop."""
        self._running.wait()
        return self._stop.is_set()

    def add_listener(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _account_pause(self) -> None:
        if self._paused_at is not None:
            self.paused_seconds += time.monotonic() - self._paused_at
            self._paused_at = None

    def _notify(self, change: str) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(change)


class RunStopped(Exception):
    """Raised by a stage that honoured a stop request; the run ends with status "stopped"."""
