"""Messages the thread workers post to the screen or widget that owns them (``post_message`` is
thread-safe)."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from engine.events import CheckpointSaved
from engine.memory import MemoryReading


@dataclass
class EventsWaiting(Message):
    """Events are waiting in the dashboard's EventInbox: one message stands for a whole burst."""


@dataclass
class ProcessSeen(Message):
    """What the run directory says of the run process (engine.runs.summarize), read off the UI
    thread (tui/follow.py): its state ("running", "dead", ...), who holds it, and for a process
    this app started, whether it still runs and its exit status once it ended."""

    run_dir: str
    state: str
    who: str = ""
    child_running: bool = False
    exit_status: int | None = None
    log_line: str = ""  # the last line of its run.log: why it ended, when it said so


@dataclass
class RunsListed(Message):
    """The runs under the runs directory (engine.runs.list_runs), read off the UI thread."""

    summaries: list


@dataclass
class MemoryRead(Message):
    """A reading of NVML, torch and psutil, taken off the UI thread."""

    reading: MemoryReading


@dataclass
class EarlierCheckpoints(Message):
    """Checkpoints an earlier run left in the chosen run dir (read off the UI thread)."""

    run_dir: str
    saved: list[CheckpointSaved]


@dataclass
class CompareRuns(Message):
    """The run list asks the app to compare the runs marked there (tui/app.py routes it)."""

    run_dirs: list


@dataclass
class RunsCompared(Message):
    """The compared runs as they are now (engine.compare.ComparedRun each), read off the UI
    thread; ``error``: why they could not be read (a directory that holds no run)."""

    runs: list
    error: str = ""
