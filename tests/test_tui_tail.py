"""EventTail: --attach reads events.jsonl from the start, then as it grows, a line at a time."""

from __future__ import annotations

from tui_runs import jsonl_line

from engine.events import JsonlWriter, Notice, RunStarted, to_json
from tui.tail import EventTail


def test_it_reads_what_jsonlwriter_wrote_with_the_time_of_each_event(tmp_path):
    path = tmp_path / "events.jsonl"
    writer = JsonlWriter(path)
    writer(RunStarted(run_dir="saved/x", preset="x", stages=["data"]))
    writer(Notice(text="hello"))
    tail = EventTail(path)
    events = tail.read_new()
    assert [type(e).__name__ for _, e in events] == ["RunStarted", "Notice"]
    assert all(isinstance(at, float) and at > 1e9 for at, _ in events)
    assert tail.read_new() == []
    writer(Notice(text="later"))
    writer.close()
    assert [e.text for _, e in tail.read_new()] == ["later"]


def test_a_line_still_being_written_waits_until_it_is_complete(tmp_path):
    path = tmp_path / "events.jsonl"
    line = jsonl_line(Notice(text="slow writer"), 1234.5)
    path.write_text(line[:20], encoding="utf-8")
    tail = EventTail(path)
    assert tail.read_new() == []
    with open(path, "a", encoding="utf-8") as f:
        f.write(line[20:])
    assert tail.read_new() == [(1234.5, Notice(text="slow writer"))]


def test_no_file_yet_is_no_events_and_an_unknown_line_is_skipped_not_fatal(tmp_path):
    path = tmp_path / "events.jsonl"
    tail = EventTail(path)
    assert tail.read_new() == []
    path.write_text('{"event":"FromTheFuture","x":1}\nnot json\n'
                    + to_json(Notice(text="ok")) + "\n", encoding="utf-8")
    assert tail.read_new() == [(None, Notice(text="ok"))]
    assert tail.skipped == 2


def test_a_replaced_file_is_read_again_from_its_start(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text(jsonl_line(Notice(text="first run, a long line"), 1.0), encoding="utf-8")
    tail = EventTail(path)
    assert len(tail.read_new()) == 1
    path.write_text(jsonl_line(Notice(text="new"), 2.0), encoding="utf-8")
    assert tail.read_new() == [(2.0, Notice(text="new"))]


def test_a_long_file_is_read_in_pieces_without_losing_a_line(tmp_path, monkeypatch):
    import tui.tail

    monkeypatch.setattr(tui.tail, "READ_BYTES", 100)  # a few lines per call
    path = tmp_path / "events.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(jsonl_line(Notice(text=f"line {i}"), float(i)) for i in range(50))
    tail = EventTail(path)
    texts = []
    while tail.offset < path.stat().st_size:
        texts.extend(event.text for _, event in tail.read_new())
    assert texts == [f"line {i}" for i in range(50)]
