"""EventTail: the app's follower of a run's ``events.jsonl``.

The reading is engine.eventlog.EventLog's (the one reader of the file: torn, damaged and older
lines, a replaced file, pieces of READ_BYTES). What the app adds: when lines were skipped as
damaged, one ``DamagedLines`` item after the events of the read that reached the end of the
file, so the log says so once ("skipped 2 damaged lines of events.jsonl") rather than per line
or per piece of a long file's replay.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.eventlog import EventLog, TimedEvent, damaged_lines


@dataclass(frozen=True)
class DamagedLines:
    """Not an event of the run: the reader's word that it skipped ``count`` more lines."""

    count: int
    text: str


class EventTail(EventLog):
    def __init__(self, path, from_end: bool = False) -> None:
        super().__init__(path, from_end)
        self.reported = 0  # damaged lines said so far

    def read_new(self) -> list[TimedEvent | tuple[None, DamagedLines]]:
        with self._lock:
            events: list = super().read_new()
            if self.at_end and self.skipped > self.reported:
                count, self.reported = self.skipped - self.reported, self.skipped
                events.append((None, DamagedLines(count, damaged_lines(count, self.path))))
            return events
