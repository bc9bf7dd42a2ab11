"""Messages the worker threads post to the app (``post_message`` is thread-safe)."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from engine.events import CheckpointSaved
from engine.memory import MemoryReading
from tui.state import Status


@dataclass
class EventsWaiting(Message):
    """Events are waiting in the app's EventInbox: one message stands for a whole burst."""


@dataclass
class RunEnded(Message):
    """The engine's thread returned: finished, stopped or failed (with the reason)."""

    status: Status
    reason: str = ""


@dataclass
class MemoryRead(Message):
    """A reading of NVML, torch and psutil, taken off the UI thread."""

    reading: MemoryReading


@dataclass
class EarlierCheckpoints(Message):
    """Checkpoints an earlier run left in the chosen run dir (read off the UI thread)."""

    run_dir: str
    saved: list[CheckpointSaved]
