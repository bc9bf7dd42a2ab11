"""EventTail: the app reads events.jsonl through engine.eventlog.EventLog (its tests are in
test_eventlog.py) and says once, in its log, how many damaged lines it skipped."""

from __future__ import annotations

from tui_runs import jsonl_line

from engine import eventlog
from engine.events import Notice
from tui.tail import DamagedLines, EventTail


def test_damaged_lines_are_said_once_after_the_replay_not_per_piece(tmp_path, monkeypatch):
    monkeypatch.setattr(eventlog, "READ_BYTES", 100)  # a few lines per call
    path = tmp_path / "events.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(30):
            f.write(jsonl_line(Notice(text=f"line {i}"), float(i)))
            if i % 10 == 0:
                f.write("null\n")
    tail = EventTail(path)
    read = []
    while not tail.at_end:
        read.extend(event for _, event in tail.read_new())
    notes = [e for e in read if isinstance(e, DamagedLines)]
    assert [e.text for e in read if isinstance(e, Notice)] == [f"line {i}" for i in range(30)]
    assert notes == [DamagedLines(3, "skipped 3 damaged lines of events.jsonl "
                                     "(not an event this version reads)")]
    assert read[-1] == notes[0]  # after the events read with it
    assert tail.read_new() == []  # said once
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"event":"Notice","text":7}\n' + jsonl_line(Notice(text="later"), 99.0))
    assert tail.read_new() == [(99.0, Notice(text="later")),
                               (None, DamagedLines(1, "skipped 1 damaged line of events.jsonl "
                                                      "(not an event this version reads)"))]


def test_a_file_without_damage_says_nothing(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text(jsonl_line(Notice(text="ok"), 1.0), encoding="utf-8")
    tail = EventTail(path)
    assert tail.read_new() == [(1.0, Notice(text="ok"))]
    assert tail.read_new() == [] and tail.reported == 0
