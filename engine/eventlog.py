"""Reading a run's ``events.jsonl``: the whole file, or what was added since the last read.

The one reader of the file (the app, ``status`` and the run list, TensorBoard and the tests all
read through it). A line is one event, as ``engine.events.JsonlWriter`` writes it: the event's
JSON object with the wall-clock ``time`` it happened. Reading is tolerant, because the file may
be read while it is written, after a crash, or after an older or newer engine wrote it:

- a last line without its newline yet is kept until it is complete (a writer mid-line);
- a damaged line (not JSON, ``null``, JSON that is not an object, an unknown event type, a field
  missing or of the wrong type: see ``engine.events.from_json``) is skipped and counted in
  ``skipped``, never fatal; the lines around it read as if it were not there;
- an older engine's events read with the defaults of fields they lack, and fields this version
  no longer knows are ignored;
- a file truncated or replaced (another run started there anew) is read again from its start.

No Textual and no torch here.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Iterator

from engine.events import TIME, Event, from_dict

READ_BYTES = 4 * 2**20  # per read_new(): a long run's file is replayed in pieces
TimedEvent = tuple["float | None", Event]  # (the time it happened, if the line says, event)


def decode(line: str | bytes) -> TimedEvent:
    """(time, event) of one line; ValueError when the line is damaged (see the module's doc)."""
    try:
        payload = json.loads(line)
    except RecursionError:
        raise ValueError("JSON nested too deep") from None
    if not isinstance(payload, dict):
        raise ValueError(f"not a JSON object: {str(payload)[:40]}")
    at = payload.pop(TIME, None)
    if at is not None and type(at) not in (int, float):
        raise ValueError(f"time = {str(at)[:40]!r}: not a number")
    return (None if at is None else float(at)), from_dict(payload)


def damaged_lines(count: int, path: Path | str = "events.jsonl") -> str:
    """The line that says so, for a log: "skipped 2 damaged lines of events.jsonl"."""
    return (f"skipped {count:,} damaged line{'s' if count != 1 else ''} of {Path(path).name} "
            "(not an event this version reads)")


class EventLog:
    """Follows one ``events.jsonl`` from its start (or, ``from_end``, from its present end).

    ``read_new()`` returns the complete lines added since the last call, up to READ_BYTES of
    them, as (time, event); call it again until ``at_end`` to read all there is. Safe to call
    from several threads (the app's worker follows while its UI thread reads the rest).
    """

    def __init__(self, path: Path | str, from_end: bool = False) -> None:
        self.path = Path(path)
        self.offset = 0  # bytes of the file read so far
        self.inode: int | None = None
        self.skipped = 0  # damaged lines skipped so far
        self.restarts = 0  # times the file was found truncated or replaced and read anew
        self.at_end = False  # the last read_new() reached the end of what the file held
        self._partial = b""  # a last line still being written
        self._lock = threading.RLock()  # (held by a subclass around read_new too)
        if from_end:  # only what is written from now on
            try:
                stat = self.path.stat()
                self.offset, self.inode = stat.st_size, stat.st_ino
            except FileNotFoundError:
                pass

    def read_new(self) -> list[TimedEvent]:
        """Complete lines written since the last call, as (time, event); [] if none or no
        file yet."""
        with self._lock:
            data = self._read_bytes()
            complete, newline, self._partial = (self._partial + data).rpartition(b"\n")
            if not newline:
                return []
            events = []
            for line in complete.split(b"\n"):
                if not line.strip():
                    continue
                try:
                    events.append(decode(line.decode("utf-8", errors="replace")))
                except ValueError:
                    self.skipped += 1
            return events

    def read_all(self) -> list[TimedEvent]:
        """Everything not read yet, to the present end of the file."""
        events = self.read_new()
        while not self.at_end:
            events.extend(self.read_new())
        return events

    def _read_bytes(self) -> bytes:
        try:
            with open(self.path, "rb") as f:
                stat = os.fstat(f.fileno())
                if stat.st_size < self.offset or (self.inode is not None
                                                  and stat.st_ino != self.inode):
                    self.offset, self._partial = 0, b""  # truncated or replaced: start over
                    self.restarts += 1
                self.inode = stat.st_ino
                f.seek(self.offset)
                data = f.read(READ_BYTES)
        except FileNotFoundError:
            self.at_end = True
            return b""
        self.offset += len(data)
        self.at_end = len(data) < READ_BYTES
        return data


def read_events(path: Path | str) -> Iterator[Event]:
    """The events of a whole file (FileNotFoundError without one), damaged lines skipped."""
    Path(path).stat()
    log = EventLog(path)
    while True:
        for _, event in log.read_new():
            yield event
        if log.at_end:
            return
