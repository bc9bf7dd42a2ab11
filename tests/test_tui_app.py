"""The app with Textual's Pilot: what a user sees and can do without a run of the engine
(the runs themselves are in test_tui_run.py): attach to a finished run, bad presets, terminal
sizes, pages, keys, NO_COLOR, and events arriving faster than the screen redraws."""

from __future__ import annotations

import asyncio
import functools
import threading
import time

import pytest
from textual.widgets import DataTable, Static
from textual_plotext import PlotextPlot
from tui_runs import EPOCHS, write_finished_run

from engine.events import MergeProgress, RunStarted, StageStarted
from engine.memory import MemoryReading
from tui.app import TransformerApp
from tui.messages import EventsWaiting
from tui.widgets.dialogs import ConfirmScreen
from tui.widgets.memory import MemoryPanel
from tui.widgets.status import StatusBar
from tui.widgets.tokenizer import TokenizerPanel

FIXED_READING = MemoryReading(nvml_error="no NVIDIA driver found", process_rss=500 * 2**20,
                              system_used=4 * 2**30, system_total=16 * 2**30)


class FixedProbe:
    """A probe that reads the same numbers every time: the screen must not depend on this
    machine's memory. (tests/test_memory.py reads the real ones.)"""

    def sample(self) -> MemoryReading:
        return FIXED_READING


@pytest.fixture(autouse=True)
def in_a_fresh_directory(tmp_path, monkeypatch):
    """The app looks for earlier runs in saved/ under the current directory: use an empty one."""
    monkeypatch.chdir(tmp_path)


def scenario(test):
    """Run an async Pilot story as a plain test (no asyncio plugin needed)."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return run


def text_of(app, selector: str) -> str:
    widget = app.query_one(selector)
    return str(widget.render())


async def until(pilot, condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await pilot.pause(0.05)
    await pilot.pause()


@scenario
async def test_attach_to_a_finished_run_shows_its_loss_curve_and_checkpoints(tmp_path):
    run_dir = tmp_path / "demo"
    write_finished_run(run_dir)
    app = TransformerApp(attach=run_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.state.status == "finished")
        app.refresh_panels(force=True)
        await pilot.pause()
        assert "FINISHED" in text_of(app, StatusBar)
        assert "read-only" in text_of(app, StatusBar)
        # the loss curve: smoothed train loss over 4 epochs, validation loss per epoch, BLEU
        plot = app.query_one("#loss-plot", PlotextPlot)
        assert plot.display
        legend = text_of(app, "#loss-legend")  # above the chart, not over the curve
        assert "train loss" in legend and "val loss" in legend and "BLEU" in legend
        chart = str(plot.render())
        assert "train loss" not in chart
        x_ticks = chart.rstrip().splitlines()[-2]  # the row above the "step" label
        assert x_ticks.split() == ["50", "100"]  # whole steps, at a round spacing
        assert "val 2.4779 (epoch 4)" in text_of(app, "#loss-summary")
        # the checkpoints: every name saved, the periodic one keep_last removed marked so
        table = app.query_one("#checkpoint-table", DataTable)
        names = [table.get_row_at(i)[0] for i in range(table.row_count)]
        assert sorted(names) == ["checkpoint_best.pt", "checkpoint_last.pt", "model_epoch_2.pt",
                                 "model_epoch_4.pt"]
        assert table.get_row("model_epoch_2.pt")[5] == "removed"
        assert table.get_row("checkpoint_last.pt")[1] == str(EPOCHS)
        # read-only: nothing to start, pause or stop
        assert not app.query("#start")
        await pilot.press("s")
        assert app.state.status == "finished" and app.control is None


@scenario
async def test_attach_follows_events_appended_while_it_watches(tmp_path):
    run_dir = tmp_path / "live"
    run_dir.mkdir()
    app = TransformerApp(attach=run_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(0.3)
        assert app.state.status == "idle"  # nothing written yet: waiting, not failing
        from engine.events import JsonlWriter
        writer = JsonlWriter(run_dir / "events.jsonl")
        writer(RunStarted(run_dir=str(run_dir), preset="live", stages=["data", "tokenizer"]))
        writer(StageStarted(stage="tokenizer", index=2, total=2))
        await until(pilot, lambda: app.state.current_stage == "tokenizer")
        assert app.state.status == "running"
        writer.close()


@scenario
async def test_attach_to_a_directory_that_does_not_exist_says_so(tmp_path):
    app = TransformerApp(attach=tmp_path / "nowhere")
    async with app.run_test() as pilot:
        await pilot.pause()
        assert app.state.status == "failed"
        assert "no such run directory" in text_of(app, StatusBar)


@scenario
async def test_a_bad_preset_path_shows_the_error_instead_of_crashing(tmp_path):
    missing = tmp_path / "no-such-preset.toml"
    app = TransformerApp(preset=str(missing), start=True, probe=FixedProbe())
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert app.state.status == "failed"
        status = text_of(app, StatusBar)
        assert "FAILED" in status and "no-such-preset.toml: preset file not found" in status
        assert app.control is None and app.is_running
        # the user fixes it: the TOML file choice holds the path, Start is enabled again
        assert not app.query_one("#start").disabled


@scenario
async def test_a_bad_override_names_the_key_and_what_would_be_accepted():
    app = TransformerApp(overrides=["training.epochs=zero"], probe=FixedProbe())
    async with app.run_test() as pilot:
        await pilot.press("s")
        await pilot.pause()
        assert app.state.status == "failed"
        assert "[training] epochs = 'zero': must be an integer" in app.state.reason


@scenario
async def test_a_too_small_terminal_says_so_and_recovers_when_enlarged():
    app = TransformerApp(probe=FixedProbe())
    async with app.run_test(size=(60, 20)) as pilot:
        message = app.query_one("#too-small", Static)
        await until(pilot, lambda: message.display, 5)
        assert "Terminal too small: 60x20" in str(message.render())
        assert not app.query_one("#main").display
        await pilot.resize_terminal(80, 24)
        await until(pilot, lambda: not message.display and app.query_one("#main").display, 5)
        assert app.query_one("#dashboard").has_class("-compact")


@scenario
async def test_at_80x24_the_keys_switch_pages_and_at_120x40_everything_shows():
    app = TransformerApp(probe=FixedProbe())
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        shown = lambda: {p.id for p in app.query(".panel") if p.display}  # noqa: E731
        run_page = {"stages", "tokenizer", "training", "memory"}
        await until(pilot, lambda: shown() == run_page)
        for key, page in (("2", {"loss"}), ("3", {"checkpoints"}), ("4", {"log"}),
                          ("1", run_page)):
            await pilot.press(key)
            await until(pilot, lambda: shown() == page, 5)  # styles apply on the next refresh
        await pilot.resize_terminal(120, 40)
        await until(pilot, lambda: shown() == {"stages", "tokenizer", "training", "loss",
                                               "memory", "checkpoints", "log"}, 5)
        assert not app.query_one("#pages").display


@scenario
async def test_without_nvidia_the_memory_panel_says_so_and_shows_process_and_system_memory():
    app = TransformerApp(probe=FixedProbe(), probe_seconds=0.05)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.state.reading is not None)
        app.refresh_panels(force=True)
        text = text_of(app, MemoryPanel)
        assert "GPU    n/a: no NVIDIA driver found" in text
        assert "RSS    500.0 MiB" in text and "4.0/16.0 GiB" in text
        assert "max_tokens" not in text  # nothing chosen yet


@scenario
async def test_every_nvml_value_may_be_missing_and_shows_as_n_a():
    app = TransformerApp(probe=FixedProbe())
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        app.state.set_reading(MemoryReading(devices=[
            {"name": "NVIDIA H100 80GB HBM3", "used": 12 * 2**30, "total": 80 * 2**30, "util": 87},
            {"name": None, "used": None, "total": None, "util": None}]))
        app.state.max_tokens = 4096
        app.refresh_panels(force=True)
        text = text_of(app, MemoryPanel)
        assert "12.0/80.0 GiB util 87%" in text
        assert "n/a/n/a util n/a" in text
        assert "max_tokens 4,096" in text


@scenario
async def test_with_no_color_the_state_still_reads_in_words(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    run_dir = tmp_path / "demo"
    write_finished_run(run_dir)
    app = TransformerApp(attach=run_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.state.status == "finished")
        app.refresh_panels(force=True)
        await pilot.pause()
        assert app.no_color
        screen = app.export_screenshot()
        assert "FINISHED" in screen and "✓" in screen and "█" in screen


@scenario
async def test_an_earlier_runs_checkpoints_are_offered_for_resume(tmp_path):
    write_finished_run(tmp_path / "saved" / "sample", recorded_dir="saved/sample")
    app = TransformerApp(preset="sample", probe=FixedProbe())
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.query_one("#checkpoint-table", DataTable)
        await until(pilot, lambda: table.row_count == 4)
        assert app.state.status == "idle"
        table.focus()
        table.move_cursor(row=1)
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        assert "Resume from" in str(app.screen.query_one("#question").render())
        await pilot.press("n")  # these files are not real checkpoints: do not start
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        assert app.state.status == "idle" and app.control is None


@scenario
async def test_quit_when_idle_leaves_at_once():
    app = TransformerApp(probe=FixedProbe())
    async with app.run_test() as pilot:
        await pilot.press("q")
        await pilot.pause()
        assert not app.is_running


@scenario
async def test_a_flood_of_events_from_a_thread_is_applied_whole_but_redrawn_at_a_bounded_rate():
    app = TransformerApp(probe=FixedProbe(), refresh_hz=4)
    n = 30_000
    wakeups = []

    def hook(message):
        if isinstance(message, EventsWaiting):
            wakeups.append(1)

    async with app.run_test(size=(120, 40), message_hook=hook) as pilot:
        await pilot.pause()
        panel = app.query_one(TokenizerPanel)
        draws_before = getattr(panel, "draws", 0)
        started = time.monotonic()

        def engine():  # the engine's thread: emit as fast as Python can
            app.inbox.put(RunStarted(run_dir="saved/flood", preset="flood", stages=["tokenizer"]))
            for merges in range(1, n + 1):
                app.inbox.put(MergeProgress(merges=merges, target_merges=n, vocab_size=merges,
                                            target_vocab=n + 100, per_second=1e4, eta=0.0,
                                            elapsed=merges / 1e4))

        thread = threading.Thread(target=engine)
        thread.start()
        await asyncio.get_running_loop().run_in_executor(None, thread.join)
        await until(pilot, lambda: app.state.merges is not None and app.state.merges.merges == n)
        # the last state is drawn at the panel's pace (at most twice a second)
        await until(pilot, lambda: f"{n:,}/{n:,}" in text_of(app, "#tokenizer-text"), 5)
        seconds = time.monotonic() - started
        assert len(wakeups) < n / 10, f"{len(wakeups)} wake-up messages for {n} events"
        redraws = panel.draws - draws_before
        assert redraws <= seconds * 2 + 3, f"{redraws} redraws in {seconds:.1f}s"  # its pace,
        # not one per event
