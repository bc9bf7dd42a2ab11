"""Messages the engine's thread and the helper threads post to the app (thread-safe)."""

from __future__ import annotations

from textual.message import Message

from engine.events import CheckpointSaved
from engine.memory import MemoryReading


class EventsWaiting(Message):
    """Events are waiting in the app's EventInbox: one message stands for a whole burst."""


class RunEnded(Message):
    """The engine's thread returned: "finished", "stopped" or "failed" (with the reason)."""

    def __init__(self, status: str, reason: str = "") -> None:
        super().__init__()
        self.status = status
        self.reason = reason


class MemoryRead(Message):
    """A reading of NVML, torch and psutil, taken off the UI thread."""

    def __init__(self, reading: MemoryReading) -> None:
        super().__init__()
        self.reading = reading


class EarlierCheckpoints(Message):
    """Checkpoints an earlier run left in the chosen run dir (read off the UI thread)."""

    def __init__(self, run_dir: str, saved: list[CheckpointSaved]) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.saved = saved
