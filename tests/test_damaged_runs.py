"""Damaged lines in a run's events.jsonl, tried as a user would: copies of a finished run's
directory (the app's fixture run and a real tiny run) with a `null` line in the middle, a loss
written as a string, a list where a number belongs. The attached app, `transformer-train status`
and the run list all say "finished"; the app says once in its log how many lines it skipped.

(Found by hand: with a `null` line the attached app said IDLE instead of FINISHED; with
train_loss as a string it crashed with a traceback.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pilot import scenario, until
from tiny_runs import tiny_config, train_run
from tui_runs import EPOCHS, write_finished_run

from engine import runs
from engine.eventlog import EventLog
from engine.history import RunState
from tui.app import TransformerApp
from tui.widgets.log import LogPanel
from tui.widgets.status import StatusBar

SKIPPED_ONE = "skipped 1 damaged line of events.jsonl (not an event this version reads)"

pytestmark = pytest.mark.usefixtures("in_a_fresh_directory")





def damage(run_dir: Path, change) -> Path:
    """Rewrite run_dir/events.jsonl with ``change(lines)``; returns run_dir."""
    path = run_dir / "events.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(change(lines)), encoding="utf-8")
    return run_dir


def null_in_the_middle(lines: list[str]) -> list[str]:
    return lines[: len(lines) // 2] + ["null\n"] + lines[len(lines) // 2:]


def rewrite(event: str, field: str, value, which: int = 0):
    """A change that gives the ``which``-th ``event`` line's ``field`` the JSON ``value``."""

    def change(lines: list[str]) -> list[str]:
        seen, out = 0, []
        for line in lines:
            payload = json.loads(line)
            if payload["event"] == event:
                if seen == which:
                    payload[field] = value
                    line = json.dumps(payload) + "\n"
                seen += 1
            out.append(line)
        return out

    return change


def log_lines(app) -> list[str]:
    return [line.split(" ", 1)[1] for line in app.state.log]


@scenario
async def test_a_null_line_in_the_middle_changes_nothing_the_attached_app_shows(tmp_path):
    clean = tmp_path / "clean"
    write_finished_run(clean)
    damaged = tmp_path / "damaged"
    shutil.copytree(clean, damaged)
    damage(damaged, null_in_the_middle)
    shown = {}
    for run_dir in (clean, damaged):
        app = TransformerApp(attach=run_dir)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.state.status == "finished")
            app.dashboard.refresh_panels(force=True)
            await pilot.pause()
            assert "FINISHED" in str(app.query_one(StatusBar).render())
            state = app.state
            shown[run_dir.name] = (state.summaries, state.checkpoints, state.train_curve,
                                   state.elapsed(), vars(state.run),
                                   [line for line in log_lines(app) if "attached" not in line])
            if run_dir == damaged:
                assert log_lines(app).count(SKIPPED_ONE) == 1
                panel = app.query_one(LogPanel)
                assert any("skipped 1 damaged line" in str(strip.text) for strip in panel.lines)
    assert shown["damaged"][:5] == shown["clean"][:5]
    assert shown["damaged"][5] == shown["clean"][5] + [SKIPPED_ONE]


@scenario
async def test_a_loss_written_as_a_string_is_skipped_and_the_app_does_not_crash(tmp_path):
    run_dir = tmp_path / "demo"
    write_finished_run(run_dir)
    damage(run_dir, rewrite("EpochSummary", "train_loss", "3.2", which=1))
    app = TransformerApp(attach=run_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.state.status == "finished")
        app.dashboard.refresh_panels(force=True)
        await pilot.pause()
        assert app.is_running and app.return_code is None
        assert "FINISHED" in str(app.query_one(StatusBar).render())
        assert [s.epoch for s in app.state.summaries] == [1, 3, 4]  # epoch 2's line skipped
        assert f"(epoch {EPOCHS})" in str(app.query_one("#loss-legend").render())
        assert log_lines(app).count(SKIPPED_ONE) == 1
        await pilot.press("2", "3", "4", "1")  # every page draws
        await pilot.pause()
        assert app.is_running


# --- a real run's directory: the app, status and the run list -----------------------------


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("real") / "tiny"
    status, emitted = train_run(run_dir, tiny_config())
    assert status == "finished"
    log = EventLog(run_dir / "events.jsonl")  # every line a real run writes reads back whole
    assert [event for _, event in log.read_all()] == emitted and log.skipped == 0
    return run_dir


DAMAGE = {
    "null": null_in_the_middle,
    "train_loss as a string": rewrite("EpochSummary", "train_loss", "3.2"),
    "a list where a number belongs": rewrite("BatchProgress", "loss", [3.2], which=2),
    "not an object": lambda lines: lines[:3] + ["[1, 2, 3]\n"] + lines[3:],
}


def damaged_copies(real_run: Path, root: Path) -> list[Path]:
    copies = []
    for name, change in DAMAGE.items():
        copy = root / name.replace(" ", "-")
        shutil.copytree(real_run, copy)
        copies.append(damage(copy, change))
    return copies


def test_status_and_the_run_list_say_finished_for_a_damaged_real_run(real_run, tmp_path):
    copies = damaged_copies(real_run, tmp_path / "saved")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "engine", "status", *map(str, copies)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == len(copies)
    for copy, line in zip(copies, lines):
        assert line.split("  ")[:2] == [str(copy), "finished"], line
        assert "preset tiny" in line and "epoch 2/2" in line
    # with no directory: every run under saved/, as the app's run list shows them
    listed = subprocess.run([sys.executable, "-m", "engine", "status"], capture_output=True,
                            text=True, env=env, timeout=120, cwd=tmp_path)
    assert sorted(line.split("  ")[1] for line in listed.stdout.splitlines()) == \
        ["finished"] * len(copies)
    summaries = runs.list_runs(tmp_path / "saved")
    assert [s.state for s in summaries] == [RunState.FINISHED] * len(copies)
    clean = runs.summarize(real_run)
    for s in summaries:
        assert (s.epoch, s.epochs, s.preset) == (clean.epoch, clean.epochs, clean.preset)


@scenario
async def test_the_app_attached_to_a_damaged_real_run_says_finished(real_run, tmp_path):
    copy = tmp_path / "tiny"
    shutil.copytree(real_run, copy)
    damage(copy, lambda lines: null_in_the_middle(DAMAGE["train_loss as a string"](lines)))
    app = TransformerApp(attach=copy)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.state.status == "finished", 20)
        app.dashboard.refresh_panels(force=True)
        await pilot.pause()
        assert "FINISHED" in str(app.query_one(StatusBar).render())
        assert [s.epoch for s in app.state.summaries] == [2]  # epoch 1's summary skipped
        assert log_lines(app).count("skipped 2 damaged lines of events.jsonl "
                                    "(not an event this version reads)") == 1


def test_tensorboard_converts_a_damaged_run_as_if_the_damaged_line_were_not_there(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from test_tensorboard import scalars

    clean = tmp_path / "clean"
    write_finished_run(clean)
    damaged = tmp_path / "damaged"
    shutil.copytree(clean, damaged)
    damage(damaged, null_in_the_middle)
    printed = {}
    for run_dir in (clean, damaged):
        result = subprocess.run([sys.executable, "-m", "engine", "tensorboard", str(run_dir)],
                                capture_output=True, text=True, timeout=120,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr
        printed[run_dir.name] = result.stdout
    assert "damaged" not in printed["clean"]
    assert f"({SKIPPED_ONE})" in printed["damaged"]
    assert scalars(damaged / "tensorboard") == scalars(clean / "tensorboard")
