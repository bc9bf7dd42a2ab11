"""EventTail: follow a run's ``events.jsonl`` from the start of the file, then as it grows.

A line still being written (no newline yet) is kept until it is complete. A line that is not an
event this version knows is skipped and reported once, never fatal: the file may come from a
newer engine.
"""

from __future__ import annotations

import threading
from pathlib import Path

from engine.events import Event, from_json

TIME_FIELD = ',"time":'  # JsonlWriter ends every line with the wall-clock time of the event
READ_BYTES = 4 * 2**20  # per call: a long run's file is replayed in pieces, the UI drawing between


class EventTail:
    def __init__(self, path: Path, from_end: bool = False) -> None:
        self.path = Path(path)
        self.offset = 0
        if from_end:  # only what is written from now on
            try:
                self.offset = self.path.stat().st_size
            except FileNotFoundError:
                pass
        self._partial = b""
        self.skipped = 0  # lines that could not be read as events
        self._lock = threading.Lock()  # a worker follows; the UI thread reads the rest at the end

    def read_new(self) -> list[tuple[float | None, Event]]:
        """Complete lines written since the last call (up to READ_BYTES of them), as
        (time, event); [] if none or no file. Safe to call from several threads."""
        with self._lock:
            return self._read_new()

    def _read_new(self) -> list[tuple[float | None, Event]]:
        try:
            with open(self.path, "rb") as f:
                if f.seek(0, 2) < self.offset:  # truncated or replaced: start over
                    self.offset, self._partial = 0, b""
                f.seek(self.offset)
                data = f.read(READ_BYTES)
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self._partial + data
        complete, _, self._partial = data.rpartition(b"\n")
        if not complete and not _:
            return []
        events = []
        for raw in complete.split(b"\n"):
            line = raw.decode("utf-8", errors="replace").strip()
            if not line:
                continue
            try:
                events.append((_event_time(line), from_json(line)))
            except (ValueError, TypeError, KeyError):
                self.skipped += 1
        return events


def _event_time(line: str) -> float | None:
    at = line.rfind(TIME_FIELD)
    if at < 0:
        return None
    try:
        return float(line[at + len(TIME_FIELD):].rstrip("}"))
    except ValueError:
        return None
