"""engine.eventlog: the one reader of events.jsonl, whole and as it grows. Every kind of damage
a line can have is skipped and counted, never fatal, and the lines around it read as if it were
not there."""

from __future__ import annotations

import json
import os

import pytest
from tui_runs import finished_run_events, jsonl_line

from engine import eventlog
from engine.eventlog import EventLog, decode, read_events
from engine.events import EpochSummary, JsonlWriter, Notice, RunFinished, RunStarted, to_json

SUMMARY = EpochSummary(epoch=1, epochs=2, step=30, train_loss=3.2, train_ppl=24.5, val_loss=3.0,
                       val_ppl=20.1, bleu=None, epoch_seconds=17.0, total_seconds=17.0)


GONE = object()


def summary_line(**changes) -> str:
    """The EpochSummary's line with some fields replaced (or, given GONE, left out)."""
    payload = {**json.loads(to_json(SUMMARY)), "time": 5.0, **changes}
    return json.dumps({key: value for key, value in payload.items() if value is not GONE})


DAMAGED = {  # what a user found, and each other kind of damage a line can have
    "null": "null",
    "a JSON list": "[1, 2]",
    "a JSON number": "3.5",
    "a JSON string": '"RunFinished"',
    "not JSON": "{'event': 'Notice'}",
    "an object without an event type": '{"text": "hello"}',
    "an unknown event type": '{"event": "FromTheFuture", "x": 1}',
    "an event type that is not a string": '{"event": ["Notice"], "text": "x"}',
    "train_loss as a string": summary_line(train_loss="3.2"),
    "a list where a number belongs": summary_line(val_loss=[3.0]),
    "an object where a list belongs": '{"event": "RunStarted", "run_dir": "d", "preset": "p", '
                                      '"stages": {"data": 1}}',
    "a bool where an int belongs": summary_line(epoch=True),
    "a float where an int belongs": summary_line(step=30.5),
    "null where a value is required": summary_line(train_loss=None),
    "a required field missing": summary_line(val_loss=GONE),
    "a number where a string belongs in a list": '{"event": "RunStarted", "run_dir": "d", '
                                                 '"preset": "p", "stages": ["data", 2]}',
    "a time that is not a number": summary_line(time="yesterday"),
    "JSON nested too deep": "[" * 100_000 + "]" * 100_000,
}


@pytest.mark.parametrize("damage", list(DAMAGED))
def test_a_damaged_line_is_skipped_and_counted_and_the_lines_around_it_read(tmp_path, damage):
    path = tmp_path / "events.jsonl"
    path.write_text(jsonl_line(Notice(text="before"), 1.0) + DAMAGED[damage] + "\n"
                    + jsonl_line(Notice(text="after"), 2.0), encoding="utf-8")
    log = EventLog(path)
    assert log.read_new() == [(1.0, Notice(text="before")), (2.0, Notice(text="after"))]
    assert log.skipped == 1
    with pytest.raises(ValueError):
        decode(DAMAGED[damage])
    assert [e.text for e in read_events(path)] == ["before", "after"]


def test_an_older_engines_events_read_with_defaults_and_newer_fields_are_ignored(tmp_path):
    older = ('{"event":"BatchProgress","epoch":1,"epochs":2,"batch":3,"batches":4,"step":3,'
             '"loss":5.0,"avg_loss":6.0,"lr":0.0001,"batches_per_second":2.0,'
             '"tokens_per_second":900.0,"eta":1.0,"elapsed":2.0,"time":1.0}')  # no gnorm...
    newer = summary_line(something_new={"a": 1}, bleu=12.5)
    path = tmp_path / "events.jsonl"
    path.write_text(older + "\n" + newer + "\n", encoding="utf-8")
    log = EventLog(path)
    (at1, batch), (at2, summary) = log.read_new()
    assert (at1, batch.step, batch.max_updates, batch.gnorm, batch.run_eta) == (1.0, 3, 0, None,
                                                                                None)
    assert (at2, summary) == (5.0, EpochSummary(**{**SUMMARY.__dict__, "bleu": 12.5}))
    assert log.skipped == 0


def test_whole_numbers_where_floats_belong_read_as_floats_and_no_time_is_none(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"event":"RunFinished","status":"finished","seconds":10}\n', encoding="utf-8")
    [(at, event)] = EventLog(path).read_new()
    assert at is None and event == RunFinished(status="finished", seconds=10.0)
    assert isinstance(event.seconds, float)


def test_a_torn_last_line_waits_and_a_torn_line_in_the_middle_is_damaged(tmp_path):
    path = tmp_path / "events.jsonl"
    torn = jsonl_line(Notice(text="cut short"), 1.0)[:25]
    path.write_text(torn + "\n" + jsonl_line(Notice(text="next run"), 2.0) + torn,
                    encoding="utf-8")
    log = EventLog(path)
    assert log.read_new() == [(2.0, Notice(text="next run"))]
    assert log.skipped == 1  # the one in the middle: a writer interrupted there never ends it
    assert list(read_events(path)) == [Notice(text="next run")]


def test_a_line_that_is_not_utf8_reads_with_the_bytes_replaced(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"event":"Notice","text":"caf\xe9"}\n')
    assert [e.text for e in read_events(path)] == ["caf\ufffd"]


def test_empty_lines_are_not_damage(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text("\n  \n" + jsonl_line(Notice(text="ok"), 1.0), encoding="utf-8")
    log = EventLog(path)
    assert log.read_new() == [(1.0, Notice(text="ok"))] and log.skipped == 0


# --- following a file as it grows (what the app's --attach does) --------------------------


def test_it_reads_what_jsonlwriter_wrote_with_the_time_of_each_event(tmp_path):
    path = tmp_path / "events.jsonl"
    writer = JsonlWriter(path)
    writer(RunStarted(run_dir="saved/x", preset="x", stages=["data"]))
    writer(Notice(text="hello"))
    log = EventLog(path)
    events = log.read_new()
    assert [type(e).__name__ for _, e in events] == ["RunStarted", "Notice"]
    assert all(isinstance(at, float) and at > 1e9 for at, _ in events)
    assert log.read_new() == []
    writer(Notice(text="later"))
    writer.close()
    assert [e.text for _, e in log.read_new()] == ["later"]


def test_a_line_still_being_written_waits_until_it_is_complete(tmp_path):
    path = tmp_path / "events.jsonl"
    line = jsonl_line(Notice(text="slow writer"), 1234.5)
    path.write_text(line[:20], encoding="utf-8")
    log = EventLog(path)
    assert log.read_new() == []
    with open(path, "a", encoding="utf-8") as f:
        f.write(line[20:])
    assert log.read_new() == [(1234.5, Notice(text="slow writer"))]
    assert log.skipped == 0


def test_no_file_yet_is_no_events_and_an_unknown_line_is_skipped_not_fatal(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    assert log.read_new() == [] and log.at_end
    path.write_text('{"event":"FromTheFuture","x":1}\nnot json\n'
                    + to_json(Notice(text="ok")) + "\n", encoding="utf-8")
    assert log.read_new() == [(None, Notice(text="ok"))]
    assert log.skipped == 2


def test_a_truncated_or_replaced_file_is_read_again_from_its_start(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text(jsonl_line(Notice(text="first run, a long line"), 1.0), encoding="utf-8")
    log = EventLog(path)
    assert len(log.read_new()) == 1
    path.write_text(jsonl_line(Notice(text="new"), 2.0), encoding="utf-8")  # truncated
    assert log.read_new() == [(2.0, Notice(text="new"))]
    assert log.restarts == 1
    # replaced by another file, longer than what was read (a run moved aside, a new one)
    other = tmp_path / "other.jsonl"
    other.write_text("".join(jsonl_line(Notice(text=f"other {i}"), 3.0) for i in range(3)),
                     encoding="utf-8")
    os.replace(other, path)
    assert [e.text for _, e in log.read_new()] == ["other 0", "other 1", "other 2"]
    assert log.restarts == 2


def test_from_end_reads_only_what_is_written_later(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text(jsonl_line(Notice(text="old"), 1.0), encoding="utf-8")
    log = EventLog(path, from_end=True)
    assert log.read_new() == []
    with open(path, "a", encoding="utf-8") as f:
        f.write(jsonl_line(Notice(text="new"), 2.0))
    assert log.read_new() == [(2.0, Notice(text="new"))]


def test_a_long_file_is_read_in_pieces_without_losing_a_line(tmp_path, monkeypatch):
    monkeypatch.setattr(eventlog, "READ_BYTES", 100)  # a few lines per call
    path = tmp_path / "events.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(jsonl_line(Notice(text=f"line {i}"), float(i)) for i in range(50))
        f.write("null\n")
    log = EventLog(path)
    texts = []
    while log.offset < path.stat().st_size:
        texts.extend(event.text for _, event in log.read_new())
    assert texts == [f"line {i}" for i in range(50)]
    assert log.skipped == 1
    assert log.at_end or log.read_new() == []
    log = EventLog(path)
    assert len(log.read_all()) == 50 and log.at_end


def test_a_finished_runs_file_reads_whole(tmp_path):
    path = tmp_path / "events.jsonl"
    events = finished_run_events()
    path.write_text("".join(jsonl_line(event, at) for at, event in events), encoding="utf-8")
    assert EventLog(path).read_all() == [(round(at, 3), event) for at, event in events]


def test_read_events_of_no_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        list(read_events(tmp_path / "events.jsonl"))
