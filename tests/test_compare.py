"""Comparing runs (engine/compare.py, `transformer-train compare`, the app's comparison screen),
on runs written from fixture events: a finished run (tests/tui_runs.py), the same run with twice
the max_tokens and the tokens/s (and the CPU time and test BLEU a current engine records), and a
run an older engine wrote (events without the fields added since) whose process died mid-line."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pilot import until
from textual.widgets import DataTable, Static
from tui_runs import finished_run_events, jsonl_line, write_finished_run

from engine import compare
from engine.config import TrainingConfig
from engine.events import (
    BatchProgress,
    EpochSummary,
    RunFinished,
    to_json,
)
from engine.events import TestBleu as BleuOfTest  # (not a pytest class to collect)
from engine.history import RunHistory, RunState
from tui.app import TransformerApp
from tui.screens.compare import CompareScreen
from tui.screens.runs import RunsScreen
from tui.widgets.compare import MARKERS

ROOT = Path(__file__).resolve().parents[1]
LATER_FIELDS = ("gnorm", "loss_scale", "max_updates", "run_eta", "cpu_seconds", "versions",
                "processes")


def write_events(run_dir: Path, events, lines: list[str] | None = None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "events.jsonl", "w", encoding="utf-8") as f:
        f.writelines(jsonl_line(event, at) for at, event in events)
        f.writelines(lines or [])


def faster_run(run_dir: Path) -> list:
    """max_tokens 4096: twice the tokens a second, the CPU time recorded, a test BLEU."""
    events = []
    for at, event in finished_run_events(str(run_dir)):
        if isinstance(event, BatchProgress):
            event = dataclasses.replace(event, tokens_per_second=6200.0)
        elif isinstance(event, EpochSummary):
            event = dataclasses.replace(event, cpu_seconds=30.0 * event.epoch)
        elif isinstance(event, RunFinished):
            events.append((at, BleuOfTest(checkpoint="checkpoint_last.pt", sentences=100,
                                        sacrebleu=27.1, sacrebleu_signature="s", paper_bleu=28.0,
                                        paper_signature="p", beam=4, length_penalty=0.6,
                                        seconds=3.0)))
            event = dataclasses.replace(event, cpu_seconds=140.5)
        events.append((at, event))
    write_events(run_dir, events)
    (run_dir / "config.toml").write_text("[training]\nmax_tokens = 4096\n", encoding="utf-8")
    return events


def older_run(run_dir: Path) -> list:
    """An older engine's lines (no field added since), the last one torn: the process died
    while writing it, before its end event."""
    events = [(at, e) for at, e in finished_run_events(str(run_dir))
              if not isinstance(e, RunFinished)]
    lines = []
    for at, event in events:
        payload = json.loads(to_json(event))
        for name in LATER_FIELDS:
            payload.pop(name, None)
        payload["time"] = at
        lines.append(json.dumps(payload) + "\n")
    write_events(run_dir, [], lines + ['{"event": "BatchProgress", "epoch": 5, "epo'])
    (run_dir / "config.toml").write_text("[training]\nmax_tokens = 2048\nwarmup = 8000\n",
                                         encoding="utf-8")
    return events


@pytest.fixture
def three_runs(tmp_path):
    saved = tmp_path / "saved"
    write_finished_run(saved / "base")
    faster_run(saved / "big")
    older_run(saved / "old")
    return saved


def test_tokens_seen_are_recorded_at_each_curve_point():
    history = RunHistory()
    for at, event in finished_run_events():
        history.apply(event, at)
    steps, _ = history.train_curve.points()
    tokens = history.tokens_at(steps)
    # 30 batches of an epoch at 3,100 tokens/s, 2 batches a second: 1,550 tokens a batch
    assert tokens[:3] == [1550.0, 3100.0, 4650.0]
    assert tokens[-1] == history.tokens == 120 * 1550
    assert history.tokens_at([2.5]) == [pytest.approx(3875.0)]  # between two points


def test_the_table_says_what_the_events_say(three_runs):
    base, big, old = compare.compare([three_runs / "base", three_runs / "big", three_runs / "old"])
    events = finished_run_events()
    summaries = [e for _, e in events if isinstance(e, EpochSummary)]
    best = min(summaries, key=lambda s: s.val_loss)
    best_bleu = max((s for s in summaries if s.bleu is not None), key=lambda s: s.bleu)
    for run in (base, big, old):
        assert run.best_val_loss == (best.val_loss, best.step)
        assert run.best_bleu == (best_bleu.bleu, best_bleu.step)
        assert run.updates == 120 and run.preset == "demo"
        assert [int(s) for s in run.val.steps] == [s.step for s in summaries]
    finished = next(e for _, e in events if isinstance(e, RunFinished))
    assert (base.state, base.wall_seconds, base.cpu_seconds) == (RunState.FINISHED,
                                                                 finished.seconds, None)
    assert (big.cpu_seconds, big.test_bleu, big.tokens_per_second) == (140.5, 27.1, 6200.0)
    assert big.tokens == 2 * base.tokens == 2 * 120 * 1550
    # by tokens, the faster run's points lie twice as far: what the x toggle compares by
    assert big.train.xs("tokens")[-1] == 2 * base.train.xs("tokens")[-1]
    assert big.train.xs("update") == base.train.xs("update")
    # the older run: read with the defaults of the fields it lacks, its torn line left out
    assert old.state == RunState.DEAD and old.cpu_seconds is None and old.test_bleu is None
    assert old.updates == 120 and len(old.train.values) == len(base.train.values)

    headers, rows = compare.table([base, big, old])
    assert headers == ["run", "state", "preset", "max_tokens", "warmup", "best val loss",
                       "best BLEU", "test BLEU", "tok/s", "wall", "CPU", "tokens"]
    by_name = {row[0]: dict(zip(headers, row)) for row in rows}
    assert by_name["big"]["max_tokens"] == "4096"
    assert by_name["old"]["warmup"] == "8000"
    assert by_name["base"]["warmup"] == by_name["big"]["warmup"] \
        == str(TrainingConfig().warmup)  # no warmup in their config.toml: the default
    assert by_name["base"]["best val loss"] == f"{best.val_loss:.3f} @{best.step}"
    assert by_name["big"]["test BLEU"] == "27.10" and by_name["base"]["test BLEU"] == "—"
    assert by_name["big"]["CPU"] == "2m20s" and by_name["base"]["CPU"] == "—"
    assert by_name["old"]["state"] == "dead" and by_name["big"]["tok/s"] == "6,200"
    assert (by_name["big"]["tokens"], by_name["base"]["tokens"]) == ("372.0k", "186.0k")


def test_a_key_name_two_sections_share_is_shown_in_full():
    assert compare.short_keys(["training.max_tokens", "model.dropout", "training.dropout"]) \
        == ["max_tokens", "model.dropout", "training.dropout"]


def test_only_the_keys_that_differ_are_shown(tmp_path):
    assert compare.differing_keys([{"a.x": 1, "a.y": 2}, {"a.x": 1, "a.y": 3}]) == ["a.y"]
    assert compare.differing_keys([{"a.x": 1}, {"a.x": 1, "a.z": [1, 2]}]) == ["a.z"]
    assert compare.differing_keys([{"a.x": 1}, {"a.x": 1}]) == []
    # a key left out of one config.toml is its default: equal to a file that spells it out
    one, two, odd = tmp_path / "one", tmp_path / "two", tmp_path / "odd"
    for d in (one, two, odd):
        d.mkdir()
    warmup = TrainingConfig().warmup
    (one / "config.toml").write_text("[training]\nmax_tokens = 2048\n")
    (two / "config.toml").write_text(f"[training]\nmax_tokens = 2048\nwarmup = {warmup}\n")
    assert compare.read_config(one) == compare.read_config(two)
    assert compare.differing_keys([compare.read_config(one), compare.read_config(two)]) == []
    # a key this version does not know (an older engine's): taken as written, never an error
    (odd / "config.toml").write_text("preset = 'x'\n[training]\nold_key = 1\n")
    assert compare.read_config(odd) == {"training.old_key": 1}
    assert compare.read_config(tmp_path) == {}  # no config.toml


def transformer_train(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_the_command_prints_the_table_and_json(three_runs):
    dirs = [str(three_runs / name) for name in ("base", "big", "old")]
    text = transformer_train("compare", *dirs)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].split() == ["run", "state", "preset", "max_tokens", "warmup", "best", "val",
                                "loss", "best", "BLEU", "test", "BLEU", "tok/s", "wall", "CPU",
                                "tokens"]
    assert [line.split()[:2] for line in lines[1:]] == [["base", "finished"],
                                                        ["big", "finished"], ["old", "dead"]]
    assert "27.10" in lines[2] and lines[2].endswith("1m13s  2m20s  372.0k")

    out = transformer_train("compare", "--json", *dirs)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [row["run"] for row in rows] == ["base", "big", "old"]
    big = rows[1]
    assert big["config"] == {"training.max_tokens": 4096,
                             "training.warmup": TrainingConfig().warmup}
    assert rows[2]["config"] == {"training.max_tokens": 2048, "training.warmup": 8000}
    assert big["test_bleu"] == 27.1 and big["cpu_seconds"] == 140.5
    assert big["tokens"] == 2 * rows[0]["tokens"] and big["tokens_per_second"] == 6200.0
    assert big["best_val_loss"]["update"] == 120 and rows[2]["state"] == "dead"
    assert rows[0]["cpu_seconds"] is None and rows[0]["wall_seconds"] > 0


def test_a_directory_without_a_run_is_one_line_and_exit_2(three_runs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for bad, why in ((empty, "no run there"), (tmp_path / "missing", "no such directory")):
        result = transformer_train("compare", str(three_runs / "base"), str(bad))
        assert result.returncode == 2
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"error: {bad}: {why}")
        assert result.stdout == ""


# --- the app ---------------------------------------------------------------------------------


def scenario(test):
    @functools.wraps(test)
    def run(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return run



def row_keys(table: DataTable) -> list[str]:
    return [row.key.value for row in table.ordered_rows]


async def mark(pilot, app, names: list[str]) -> None:
    table = app.screen.query_one(DataTable)
    for name in names:
        table.move_cursor(row=[Path(k).name for k in row_keys(table)].index(name))
        await pilot.press("space")


@scenario
async def test_mark_two_runs_compare_them_and_toggle_the_x_axis(three_runs, monkeypatch):
    monkeypatch.chdir(three_runs.parent)
    app = TransformerApp(show_runs=True, runs_dir=three_runs)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, RunsScreen)
                    and app.screen.query_one(DataTable).row_count == 3)
        screen = app.screen
        await pilot.press("c")  # nothing marked: says so, stays
        await pilot.pause()
        assert isinstance(app.screen, RunsScreen)
        assert any("mark two or more" in str(n.message) for n in app._notifications)
        await mark(pilot, app, ["base", "big"])
        table = screen.query_one(DataTable)
        marks = {Path(k).name: table.get_cell(k, "marked") for k in row_keys(table)}
        assert marks == {"base": "✓", "big": "✓", "old": ""}
        await mark(pilot, app, ["base"])  # space again: unmarked
        assert table.get_cell(str(three_runs / "base"), "marked") == ""
        shown = [table.render_line(y).text.split() for y in range(1, 4)]  # as drawn
        drawn = {(words[1] if words[0] == "✓" else words[0]): words[0] == "✓"
                 for words in shown}  # the mark is the first column
        assert drawn == {"base": False, "big": True, "old": False}
        await mark(pilot, app, ["base"])
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, CompareScreen)
                    and len(app.screen.compared) == 2)
        compare_screen = app.screen
        assert [run.name for run in compare_screen.compared] == ["big", "base"]  # marking order
        legend = str(compare_screen.query_one("#compare-legend", Static).render())
        assert f"{MARKERS[0][0]}{MARKERS[0][1]} big" in legend
        assert f"{MARKERS[1][0]}{MARKERS[1][1]} base" in legend
        data = compare_screen.query_one("#compare-table", DataTable)
        headers = [str(c.label) for c in data.columns.values()]
        assert "max_tokens" in headers and "best val loss" in headers
        rows = [[str(cell) for cell in data.get_row_at(i)] for i in range(data.row_count)]
        assert rows[0][0] == f"{MARKERS[0][0]}{MARKERS[0][1]} big"
        assert rows[0][headers.index("max_tokens")] == "4096"
        assert rows[1][headers.index("max_tokens")] == "2048"
        assert rows[0][headers.index("state")] == "finished"
        assert rows[0][headers.index("test BLEU")] == "27.10"
        loss = compare_screen.query_one("#compare-loss")
        assert loss.border_subtitle.startswith("x: update")
        drawn = compare_screen.draws
        await pilot.press("x")
        assert loss.border_subtitle.startswith("x: tokens seen")
        assert compare_screen.draws == drawn + 1
        await pilot.press("x")
        assert loss.border_subtitle.startswith("x: update")
        drawn = compare_screen.draws
        await pilot.resize_terminal(80, 24)  # ticks and points refit to the smaller plots
        await until(pilot, lambda: compare_screen.draws > drawn)
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, RunsScreen))


@scenario
async def test_a_live_run_keeps_updating_in_the_comparison(three_runs, monkeypatch):
    monkeypatch.chdir(three_runs.parent)
    live = three_runs / "live"
    events = [(at, e) for at, e in finished_run_events(str(live))
              if not isinstance(e, RunFinished)]
    cut = next(i for i, (_, e) in enumerate(events) if isinstance(e, EpochSummary) and e.epoch == 2)
    write_events(live, events[:cut])
    (live / "config.toml").write_text("[training]\nmax_tokens = 2048\n")
    # this process owns the run: live, as a run process would be (the lock taken after the
    # process began: an older lock time would read as a reused pid)
    (live / "run.lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                               "started_at": time.time(), "processes": 1}))
    app = TransformerApp(runs_dir=three_runs)
    async with app.run_test(size=(120, 40)) as pilot:
        app.push_screen(CompareScreen([three_runs / "base", live]))
        await until(pilot, lambda: isinstance(app.screen, CompareScreen)
                    and len(app.screen.compared) == 2)
        screen = app.screen
        assert screen.compared[1].state == RunState.RUNNING
        assert len(screen.compared[1].val.values) == 1
        assert "1 live, following" in str(screen.query_one("#compare-title", Static).render())
        with open(live / "events.jsonl", "a", encoding="utf-8") as f:
            f.writelines(jsonl_line(e, at) for at, e in events[cut:])
            f.write(jsonl_line(RunFinished(status="finished", seconds=80.0), events[-1][0]))
        (live / "run.lock").unlink()  # as the run process does when it exits
        await until(pilot, lambda: screen.compared[1].state == RunState.FINISHED)
        assert len(screen.compared[1].val.values) == 4
        data = screen.query_one("#compare-table", DataTable)
        assert str(data.get_row_at(1)[1]) == "finished"
    assert not any(math.isnan(v) for v in screen.compared[1].train.values)


def test_an_older_run_started_line_still_names_the_preset(tmp_path):
    """RunStarted of an older engine (no versions, no processes), and nothing after it."""
    line = json.dumps({"event": "RunStarted", "run_dir": "x", "preset": "old", "stages": [],
                       "time": 1.0}) + "\n"
    (tmp_path / "events.jsonl").write_text(line)
    (run,) = compare.compare([tmp_path])
    assert run.preset == "old" and run.state == RunState.DEAD
    assert run.best_val_loss is None and run.train.values == [] and run.tokens == 0


def test_real_runs_record_cpu_time_and_compare_by_tokens(tmp_path):
    """Two real (tiny) runs, max_tokens 250 and 500: the engine records its CPU time, and the
    one difference of their configs is the one key the table shows."""
    from tiny_runs import tiny_config, train_run

    for max_tokens in (250, 500):
        config = tiny_config(training__epochs=1, training__max_tokens=max_tokens)
        status, _ = train_run(tmp_path / f"mt{max_tokens}", config)
        assert status == "finished"
    small, large = compare.compare([tmp_path / "mt250", tmp_path / "mt500"])
    for run in (small, large):
        assert run.state == RunState.FINISHED and run.cpu_seconds > 0 and run.tokens > 0
        assert run.best_val_loss is not None and run.train.values and run.val.values
    # more tokens a batch: fewer updates for the same data, about as many tokens
    assert large.updates < small.updates
    assert large.tokens / large.updates > small.tokens / small.updates
    headers, _ = compare.table([small, large])
    assert headers[3:4] == ["max_tokens"] and headers[4] == "best val loss"
