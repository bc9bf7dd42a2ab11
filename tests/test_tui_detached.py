"""Runs that outlive the app's terminal, as a person meets them (issue 11), with real child
processes: the app is started in tmux, the tmux session is killed mid-training (as a dropped SSH
connection does), the run goes on and finishes; a new app lists the runs, attaches to a live one
and pauses, resumes and stops it; a run killed with SIGKILL shows as dead and resumes from its
last checkpoint; quitting with a live run asks; a start where an earlier run lives never
replaces its files.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from textual.widgets import DataTable
from tui_runs import SMALL, write_finished_run

from engine import runs
from tui.app import TransformerApp
from tui.screens.dialogs import ChoiceScreen, ConfirmScreen
from tui.screens.runs import RunsScreen

ROOT = Path(__file__).resolve().parents[1]
LONGER = [item for item in SMALL if not item.startswith("training.epochs")] + [
    "training.epochs=1000"]  # never reached: the test stops it

needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def scenario(test):
    @functools.wraps(test)
    def run(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return run


def events_of(run_dir: Path) -> list[dict]:
    try:
        lines = (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.endswith("}")]


def batches(run_dir: Path) -> list[dict]:
    return [e for e in events_of(run_dir) if e["event"] == "BatchProgress"]


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {seconds:.0f} s")
        time.sleep(0.2)


async def until(pilot, condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            app = pilot.app
            raise AssertionError(f"no {what} after {seconds:.0f} s (app: {app.state.status} "
                                 f"{app.state.reason})")
        await pilot.pause(0.1)
    await pilot.pause()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def in_tmux(session: str, cwd: Path, *args: str) -> None:
    """transformer-tui in a detached tmux session (a terminal of its own), as a person runs it."""
    env = f"PYTHONPATH={ROOT} HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1"
    command = f"cd {cwd} && {env} {sys.executable} -m tui.cli {' '.join(args)}"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "40", command],
                   check=True)


def kill_tmux(session: str) -> None:
    subprocess.run(["tmux", "kill-session", "-t", session], check=False)


def stop_if_live(run_dir: Path) -> None:
    """Cleanup: a run a failed test left live must not train on."""
    try:
        runs.send_control(run_dir, "stop")
    except Exception:
        return
    wait_for(lambda: runs.summarize(run_dir).state.value not in ("running", "paused", "stalled"),
             60, "the stop of a left-over run")


@needs_tmux
@scenario
async def test_the_terminal_goes_the_run_goes_on_and_a_new_app_finds_and_steers_it(tmp_path):
    saved = tmp_path / "saved"
    short, long = saved / "short", saved / "long"
    session = f"tt-{os.getpid()}"
    try:
        # 1. start a run from the app; kill the app's terminal mid-training
        in_tmux(session, tmp_path, "--preset", "sample", *(f"--set {s}" for s in SMALL),
                "--run-dir", str(short), "--start")
        wait_for(lambda: len(batches(short)) >= 2, 180, "training in the run started in tmux")
        kill_tmux(session)
        seen = len(batches(short))
        wait_for(lambda: len(batches(short)) > seen + 3, 60, "progress after the terminal went")
        wait_for(lambda: any(e["event"] == "RunFinished" for e in events_of(short)), 300,
                 "the end of the run")
        assert [e["status"] for e in events_of(short) if e["event"] == "RunFinished"] == [
            "finished"]

        # 2. a longer one, also left behind by its terminal
        in_tmux(session, tmp_path, "--preset", "sample", *(f"--set {s}" for s in LONGER),
                "--run-dir", str(long), "--start")
        wait_for(lambda: len(batches(long)) >= 2, 180, "training in the second run")
        kill_tmux(session)

        # 3. a new app opens on the list of runs: both are there; Enter attaches
        app = TransformerApp(show_runs=True, runs_dir=saved)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, RunsScreen)
                        and app.screen.query_one(DataTable).row_count == 2, 30, "two runs listed")
            table = app.screen.query_one(DataTable)
            # each row without its first cell, the comparison mark
            rows = {table.get_row_at(i)[1]: table.get_row_at(i)[1:] for i in range(2)}
            assert str(rows["short"][2]) == "finished" and str(rows["long"][2]) == "running"
            table.move_cursor(row=[table.get_row_at(i)[1] for i in range(2)].index("long"))
            await pilot.press("enter")
            await until(pilot, lambda: app.state.status == "running"
                        and app.state.batch is not None, 60, "the attached run")
            assert app.dashboard.followed == long

            # pause: no batch over 5 s; resume: batches again; stop: a checkpoint at that batch
            await pilot.press("p")
            await until(pilot, lambda: app.state.status == "paused", 30, "paused")
            await pilot.pause(1.0)  # the batch in flight may still report
            paused_at = len(batches(long))
            time.sleep(5)
            assert len(batches(long)) == paused_at, "batches went on while paused"
            await pilot.press("p")
            await until(pilot, lambda: len(batches(long)) > paused_at, 60, "progress after resume")
            await pilot.press("x", "y")
            await until(pilot, lambda: app.state.status == "stopped", 60, "stopped")
            assert "checkpoint_last.pt" in str(app.query_one("#status").render())
        # the checkpoint holds the batch the run stopped at (progress is reported a few times a
        # second, so the last report may be a step or two before it)
        step = torch.load(long / "checkpoint_last.pt", weights_only=True)["step"]
        saved = [e for e in events_of(long) if e["event"] == "CheckpointSaved"
                 and e["name"] == "checkpoint_last.pt"]
        assert step == saved[-1]["step"] >= batches(long)[-1]["step"]
        assert events_of(long)[-1]["event"] == "RunFinished" and \
            events_of(long)[-1]["status"] == "stopped"
    finally:
        kill_tmux(session)
        stop_if_live(long)
        stop_if_live(short)


@scenario
async def test_quitting_with_a_live_run_asks_leave_it_or_stop_it(tmp_path):
    run_dir = tmp_path / "saved" / "sample"
    try:
        app = TransformerApp(preset="sample", overrides=LONGER, runs_dir=tmp_path / "saved")
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("s")
            await until(pilot, lambda: app.state.batch is not None, 180, "training")
            await pilot.press("q")
            await until(pilot, lambda: isinstance(app.screen, ChoiceScreen), 5, "the question")
            await pilot.press("escape")  # cancel: nothing happens
            await pilot.pause()
            assert app.is_running and app.state.status == "running"
            await pilot.press("q", "l")  # leave it running
            await until(pilot, lambda: not app.is_running, 10, "exit")
        step = len(batches(run_dir))
        wait_for(lambda: len(batches(run_dir)) > step, 60, "progress without the app")
        assert runs.summarize(run_dir).state.value == "running"

        again = TransformerApp(attach=run_dir)
        async with again.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: again.state.status == "running", 60, "attached")
            await pilot.press("q", "s")  # stop it: the app quits once the checkpoint is saved
            await until(pilot, lambda: not again.is_running, 120, "exit after the stop")
        assert [e["status"] for e in events_of(run_dir) if e["event"] == "RunFinished"] == [
            "stopped"]
        assert (run_dir / "checkpoint_last.pt").is_file()
    finally:
        stop_if_live(run_dir)


@scenario
async def test_a_killed_run_shows_dead_with_its_last_checkpoint_and_resumes_from_it(tmp_path):
    run_dir = tmp_path / "saved" / "sample"
    try:
        app = TransformerApp(preset="sample", overrides=LONGER, runs_dir=tmp_path / "saved")
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("s")
            await until(pilot, lambda: "checkpoint_last.pt" in app.state.checkpoints, 240,
                        "a first checkpoint (end of epoch 1)")
            pid = json.loads((run_dir / "run.lock").read_text())["pid"]
            os.kill(pid, signal.SIGKILL)
            killed_at = time.monotonic()
            await until(pilot, lambda: app.state.status == "dead", 35, "dead")
            assert time.monotonic() - killed_at < 30
            status = str(app.query_one("#status").render())
            assert "DEAD" in status and "checkpoint_last.pt" in status and "r resumes" in status

            saved_step = app.state.checkpoints["checkpoint_last.pt"].step
            await pilot.press("3")
            table = app.query_one("#checkpoint-table", DataTable)
            names = [table.get_row_at(i)[0] for i in range(table.row_count)]
            table.move_cursor(row=names.index("checkpoint_last.pt"))
            await pilot.press("r")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "the question")
            await pilot.press("y")
            await until(pilot, lambda: app.state.status == "running" and app.state.batch.step
                        > saved_step, 180, "progress after the resume")
            xs, _ = app.state.train_curve.points()
            assert xs[0] <= 2  # the history before the kill is still shown
            await pilot.press("x", "y")
            await until(pilot, lambda: app.state.status == "stopped", 60, "stopped")
    finally:
        stop_if_live(run_dir)


@scenario
async def test_a_start_where_an_earlier_run_lives_offers_resume_fresh_or_cancel(tmp_path):
    run_dir = tmp_path / "saved" / "sample"
    write_finished_run(run_dir, recorded_dir=str(run_dir))
    best = sha256(run_dir / "checkpoint_best.pt")
    try:
        app = TransformerApp(preset="sample", overrides=SMALL, runs_dir=tmp_path / "saved")
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("s")
            await until(pilot, lambda: isinstance(app.screen, ChoiceScreen), 5, "the question")
            question = str(app.screen.query_one("#question").render())
            assert "An earlier run lives in" in question and "finished" in question
            await pilot.press("escape")  # cancel: nothing started, nothing moved
            await pilot.pause(0.5)
            assert app.state.status == "idle" and sha256(run_dir / "checkpoint_best.pt") == best
            assert not (run_dir / "run.lock").exists()

            await pilot.press("s", "f")  # start fresh: the earlier run moves aside, kept whole
            await until(pilot, lambda: app.state.status == "running", 120, "the fresh run")
            [previous] = list((run_dir / "previous").iterdir())
            assert sha256(previous / "checkpoint_best.pt") == best
            assert len([e for e in events_of(run_dir) if e["event"] == "RunStarted"]) == 1
            await pilot.press("x", "y")
            await until(pilot, lambda: not app.state.active, 60, "stopped")
    finally:
        stop_if_live(run_dir)
