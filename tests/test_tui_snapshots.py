"""Snapshots of the main screen (pytest-textual-snapshot) at 80x24 and 120x40, from fixed inputs:
attached to a finished run written with fixed numbers and times (tests/tui_runs.py), in UTC,
with relative paths, so that nothing depends on the clock, this machine or randomness.

Update after an intended change of the layout: pytest tests/test_tui_snapshots.py --snapshot-update
"""

from __future__ import annotations

import time

import pytest
from tui_runs import write_finished_run

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
