"""Snapshots of the main screen (pytest-textual-snapshot) at 80x24 and 120x40, from fixed inputs:
attached to a finished run written with fixed numbers and times (tests/tui_runs.py), in UTC,
with relative paths, so that nothing depends on the clock, this machine or randomness.

Update after an intended change of the layout: pytest tests/test_tui_snapshots.py --snapshot-update
"""

from __future__ import annotations

import time

import pytest
from tui_runs import write_finished_run, write_paused_run

from tui.app import TransformerApp


@pytest.fixture
def finished_run(tmp_path, monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    monkeypatch.chdir(tmp_path)
    write_finished_run(tmp_path / "saved" / "demo")
    yield "saved/demo"
    monkeypatch.undo()
    time.tzset()


async def loaded(pilot) -> None:
    app = pilot.app
    for _ in range(200):
        if app.state.status == "finished":
            break
        await pilot.pause(0.05)
    app.dashboard.refresh_panels(force=True)
    await pilot.pause()


def loaded_on_page(key: str):
    """Loaded, then the page shown and drawn at its size (not at the timer's pace: a loaded
    machine must not change the picture)."""

    async def run_before(pilot) -> None:
        await loaded(pilot)
        await pilot.press(key)
        await pilot.pause(0.2)
        pilot.app.dashboard.refresh_panels(force=True)
        await pilot.pause(0.2)

    return run_before


def test_main_screen_at_120x40(snap_compare, finished_run):
    app = TransformerApp(attach=finished_run)
    assert snap_compare(app, terminal_size=(120, 40), run_before=loaded)


def test_main_screen_at_80x24(snap_compare, finished_run):
    app = TransformerApp(attach=finished_run)
    assert snap_compare(app, terminal_size=(80, 24), run_before=loaded)


def test_loss_page_at_80x24(snap_compare, finished_run):
    app = TransformerApp(attach=finished_run)
    assert snap_compare(app, terminal_size=(80, 24), run_before=loaded_on_page("2"))


def test_log_page_at_80x24(snap_compare, finished_run):
    """Lines logged while the page was hidden, wrapped at the page's width."""
    app = TransformerApp(attach=finished_run)
    assert snap_compare(app, terminal_size=(80, 24), run_before=loaded_on_page("4"))


@pytest.fixture
def paused_run(tmp_path, monkeypatch):
    """A run paused in the middle of epoch 3, its lock held here (so it reads as live), and a
    clock fixed a few seconds after its last event."""
    from engine.runs import RunLock

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    monkeypatch.chdir(tmp_path)
    last = write_paused_run(tmp_path / "saved" / "demo")
    lock = RunLock.acquire(tmp_path / "saved" / "demo")
    yield "saved/demo", lambda: last + 5.0
    lock.release()
    monkeypatch.undo()
    time.tzset()


async def paused(pilot) -> None:
    app = pilot.app
    for _ in range(200):
        if app.state.status == "paused":
            break
        await pilot.pause(0.05)
    await pilot.pause(0.2)
    app.dashboard.refresh_panels(force=True)
    await pilot.pause()


def paused_on_page(key: str):
    async def run_before(pilot) -> None:
        await paused(pilot)
        await pilot.press(key)
        await pilot.pause(0.2)
        pilot.app.dashboard.refresh_panels(force=True)
        await pilot.pause(0.2)

    return run_before


def test_loss_page_mid_run_at_120x40(snap_compare, paused_run):
    """Mid-run (paused in epoch 3): the whole train curve from step 1, on top of the validation
    and BLEU points, 12 plot rows, round ticks; PAUSED on the status and the Stages row."""
    run_dir, clock = paused_run
    app = TransformerApp(attach=run_dir, clock=clock)
    assert snap_compare(app, terminal_size=(120, 40), run_before=paused)


def test_loss_page_mid_run_at_80x24(snap_compare, paused_run):
    run_dir, clock = paused_run
    app = TransformerApp(attach=run_dir, clock=clock)
    assert snap_compare(app, terminal_size=(80, 24), run_before=paused_on_page("2"))
