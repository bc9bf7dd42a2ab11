"""The app with Textual's Pilot: what a user sees and can do without a run of the engine
(the runs themselves are in test_tui_run.py): attach to a finished run, bad presets, terminal
sizes, pages, keys, NO_COLOR, and events arriving faster than the screen redraws."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from pilot import scenario, until
from textual.widgets import Button, DataTable, Static
from textual_plotext import PlotextPlot
from tui_runs import EPOCHS, finished_run_events, jsonl_line, write_finished_run

from engine.events import (
    BatchProgress,
    CheckpointSaved,
    MemorySample,
    MergeProgress,
    RunFinished,
    RunPaused,
    RunResumed,
    RunStarted,
    StageStarted,
)
from engine.memory import MemoryReading
from tui.app import TransformerApp
from tui.messages import EventsWaiting
from tui.screens.dialogs import ConfirmScreen
from tui.screens.runs import RunsScreen
from tui.widgets.checkpoints import CheckpointsPanel
from tui.widgets.log import LogPanel
from tui.widgets.memory import MemoryPanel
from tui.widgets.status import StatusBar
from tui.widgets.tokenizer import TokenizerPanel

FIXED_READING = MemoryReading(nvml_error="no NVIDIA driver found", process_rss=500 * 2**20,
                              system_used=4 * 2**30, system_total=16 * 2**30)

pytestmark = pytest.mark.usefixtures("in_a_fresh_directory")


class FixedProbe:
    """A probe that reads the same numbers every time: the screen must not depend on this
    machine's memory. (tests/test_memory.py reads the real ones.)"""

    def sample(self) -> MemoryReading:
        return FIXED_READING




def text_of(app, selector: str) -> str:
    widget = app.query_one(selector)
    return str(widget.render())



@scenario
async def test_attach_to_a_finished_run_shows_its_loss_curve_and_checkpoints(tmp_path):
    run_dir = tmp_path / "demo"
    write_finished_run(run_dir)
    app = TransformerApp(attach=run_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.state.status == "finished")
        app.dashboard.refresh_panels(force=True)
        await pilot.pause()
        assert "FINISHED" in text_of(app, StatusBar)
        assert str(run_dir) in text_of(app, "#attach-label")
        # the loss curve: smoothed train loss over 4 epochs, validation loss per epoch, BLEU
        plot = app.query_one("#loss-plot", PlotextPlot)
        assert plot.display
        legend = text_of(app, "#loss-legend")  # above the chart, not over the curve
        assert "train" in legend and "val" in legend and "BLEU" in legend
        chart = str(plot.render())
        assert "train" not in chart
        x_ticks = chart.rstrip().splitlines()[-1]  # under the plot's frame
        assert x_ticks.split() == ["50", "100"]  # whole steps, at a round spacing
        assert "val 2.4779 (epoch 4)" in legend
        # the checkpoints: every name saved, the periodic one keep_last removed marked so
        table = app.query_one("#checkpoint-table", DataTable)
        names = [table.get_row_at(i)[0] for i in range(table.row_count)]
        # (model_epoch_2.pt, deleted by keep_last, is no row: the hint counts it)
        assert sorted(names) == ["checkpoint_best.pt", "checkpoint_last.pt", "model_epoch_4.pt"]
        assert "1 removed by keep_last" in text_of(app, "#checkpoint-hint")
        # the cursor rests on checkpoint_last.pt: what r resumes from unless the user moves it
        assert app.dashboard.query_one(CheckpointsPanel).selected().name == "checkpoint_last.pt"
        assert table.get_row("checkpoint_last.pt")[1] == str(EPOCHS)
        # a finished run: nothing to start here (l lists the runs), pause or stop
        assert not app.query_one("#start").display
        await pilot.press("s")
        assert app.state.status == "finished" and app.dashboard.followed == run_dir


@scenario
async def test_attach_follows_events_appended_while_it_watches(tmp_path):
    run_dir = tmp_path / "live"
    run_dir.mkdir()
    app = TransformerApp(attach=run_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(0.3)
        assert app.state.status == "idle"  # nothing written yet: waiting, not failing
        from engine.events import JsonlWriter
        from engine.runs import RunLock
        # the run's lock, held by this process: the app's look at the run process finds it
        # alive (without one, a look under load could come first and rightly say dead)
        lock = RunLock.acquire(run_dir)
        writer = JsonlWriter(run_dir / "events.jsonl")
        writer(RunStarted(run_dir=str(run_dir), preset="live", stages=["data", "tokenizer"]))
        writer(StageStarted(stage="tokenizer", index=2, total=2))
        await until(pilot, lambda: app.state.current_stage == "tokenizer")
        assert app.state.status == "running"
        writer.close()
        lock.release()


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
        assert app.dashboard.followed is None and app.is_running
        # the user fixes it: the TOML file choice holds the path, Start is enabled again
        assert not app.query_one("#start").disabled


@scenario
async def test_a_bad_override_names_the_key_and_what_would_be_accepted():
    app = TransformerApp(overrides=["training.epochs=zero"], probe=FixedProbe())
    async with app.run_test() as pilot:
        await pilot.press("s")
        await until(pilot, lambda: app.state.status == "failed")
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
        app.dashboard.refresh_panels(force=True)
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
        app.dashboard.refresh_panels(force=True)
        text = text_of(app, MemoryPanel)
        assert "12.0/80.0 GiB util 87%" in text
        assert "n/a/n/a util n/a" in text
        assert "max_tokens 4,096" in text


@scenario
async def test_the_memory_panel_shows_what_tuning_max_tokens_needs():
    """The run's samples carry the largest batch's peak and shape, the headroom to the budget,
    the out-of-memory batches skipped and the fit's recommendation: all of it on the panel."""
    app = TransformerApp(probe=FixedProbe())
    gib = 2**30
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        for peak in (1.0, 1.2, 1.4):
            app.state.apply(MemorySample(
                devices=[], torch_allocated=None, torch_reserved=None, torch_peak=None,
                process_rss=int(peak * gib), system_used=4 * gib, system_total=16 * gib,
                max_tokens=6144, budget=int(1.5 * gib), recent_peak=int(peak * gib),
                largest_batch_peak=int(peak * gib), largest_batch=[652, 13, 13],
                headroom=int((1.5 - peak) * gib), oom_skipped=2, fit_max_tokens=5888), None)
        app.dashboard.refresh_panels(force=True)
        text = text_of(app, MemoryPanel)
        assert "max_tokens 6,144" in text and "fit: 5,888" in text
        assert "Max batch (652x13/13) 1.4 GiB" in text
        assert "Headroom 102.4 MiB of 1.5 GiB" in text
        assert "OOM batches skipped 2" in text
        peaks = next(line for line in text.splitlines() if line.startswith("Peaks"))
        # one mark per sample, scaled to the peaks' own range (lowest to highest block), which
        # the line names: against the whole budget a CPU's peaks looked flat
        assert peaks.split()[1] == "▁▄█" and peaks.endswith("1.0 GiB-1.4 GiB")
        assert app.dashboard.query_one(MemoryPanel).border_title == "Memory (CPU: process, system)"
        assert list(app.state.peak_history) == [int(p * gib) for p in (1.0, 1.2, 1.4)]


@scenario
async def test_with_no_color_the_state_still_reads_in_words(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    run_dir = tmp_path / "demo"
    write_finished_run(run_dir)
    app = TransformerApp(attach=run_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.state.status == "finished")
        app.dashboard.refresh_panels(force=True)
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
        await until(pilot, lambda: table.row_count == 3)  # model_epoch_2.pt was removed
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
        assert app.state.status == "idle" and app.dashboard.followed is None


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
            app.dashboard.inbox.put(RunStarted(run_dir="saved/flood", preset="flood", stages=["tokenizer"]))
            for merges in range(1, n + 1):
                app.dashboard.inbox.put(MergeProgress(merges=merges, target_merges=n, vocab_size=merges,
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


@scenario
async def test_each_page_key_focuses_the_pages_main_widget_and_never_a_button(tmp_path):
    write_finished_run(tmp_path / "saved" / "sample", recorded_dir="saved/sample")
    app = TransformerApp(preset="sample", probe=FixedProbe())
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.query_one("#checkpoint-table", DataTable).row_count == 3)
        assert app.focused is app.query_one("#preset")  # idle: choose a preset
        for key, focused in (("3", "checkpoint-table"), ("4", "log"), ("2", None),
                             ("1", "preset")):
            await pilot.press(key)
            await pilot.pause()
            assert (app.focused.id if app.focused else None) == focused, key
        for _ in range(8):  # Tab goes round the focusable widgets: never onto a button
            await pilot.press("tab")
            assert not isinstance(app.focused, Button)


@scenario
async def test_r_resumes_from_the_selected_checkpoint_after_asking(tmp_path):
    write_finished_run(tmp_path / "saved" / "sample", recorded_dir="saved/sample")
    app = TransformerApp(preset="sample", probe=FixedProbe())
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.query_one("#checkpoint-table", DataTable)
        await until(pilot, lambda: table.row_count == 3)
        # ordered by step (the epoch-2 checkpoint, deleted by keep_last, is no row); r without
        # moving the cursor: checkpoint_last.pt, what a resume nearly always wants
        assert [table.get_row_at(i)[2] for i in range(3)] == ["120", "120", "120"]
        await pilot.press("3", "r")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        question = str(app.screen.query_one("#question").render())
        assert "Resume from checkpoint_last.pt?" in question and "step 120" in question
        await pilot.press("n")  # these files are not real checkpoints: do not start
        await pilot.pause()
        # a row the user moves to is the one r takes, and stays chosen across redraws
        await pilot.press("up", "r")
        await pilot.pause()
        chosen = table.get_row_at(table.cursor_row)[0]
        assert chosen != "checkpoint_last.pt"
        assert f"Resume from {chosen}?" in str(app.screen.query_one("#question").render())
        await pilot.press("n")
        app.dashboard.refresh_panels(force=True)
        await pilot.pause()
        assert table.get_row_at(table.cursor_row)[0] == chosen
        assert app.state.status == "idle" and app.dashboard.followed is None


@scenario
async def test_at_80x24_the_status_is_one_row_and_the_log_written_while_hidden_is_not_wrapped(
        tmp_path):
    run_dir = tmp_path / "a-run-directory-with-a-rather-long-name" / "and-a-second-level"
    write_finished_run(run_dir)
    app = TransformerApp(attach=run_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.state.status == "finished")
        app.dashboard.refresh_panels(force=True)
        await pilot.pause()
        status = app.query_one(StatusBar)
        assert status.size.height == 1 and "1m13s" in text_of(app, StatusBar)  # elapsed first
        await pilot.press("4")  # the log was filled while its page was hidden
        await until(pilot, lambda: app.query_one(LogPanel).lines, 5)
        lines = [strip.text.rstrip() for strip in app.query_one(LogPanel).lines]
        assert "run finished after 1m13s" in lines[-1]
        assert max(len(line) for line in lines) > 60  # wrapped at the panel's width, not at 20
        assert all(len(line) <= 76 for line in lines)


def progress(step: int, **changes) -> BatchProgress:
    fields = dict(epoch=1, epochs=2, batch=step, batches=100, step=step, loss=4.0, avg_loss=4.2,
                  lr=0.0005, batches_per_second=3.0, tokens_per_second=2500.0, eta=30.0,
                  elapsed=10.0)
    return BatchProgress(**{**fields, **changes})


@scenario
async def test_paused_shows_in_speed_and_eta_and_a_stop_names_the_checkpoint_holding_its_state():
    app = TransformerApp(probe=FixedProbe())
    async with app.run_test(size=(120, 40)) as pilot:
        app.dashboard.inbox.put(RunStarted(run_dir="saved/x", preset="x", stages=["train"]))
        app.dashboard.inbox.put(progress(10))
        await until(pilot, lambda: "tok/s" in text_of(app, "#training"))
        app.dashboard.inbox.put(RunPaused(stage="train"))  # no batch follows: the pause alone redraws
        await until(pilot, lambda: "paused" in text_of(app, "#training"), 5)
        training = text_of(app, "#training")
        assert "Speed  paused" in training and "ETA    paused" in training
        assert "2,500 tok/s" not in training  # the last numbers would read as the present
        app.dashboard.inbox.put(RunResumed(stage="train", paused_seconds=3.0))
        app.dashboard.inbox.put(progress(11))
        app.dashboard.inbox.put(CheckpointSaved(path="saved/x/checkpoint_last.pt", name="checkpoint_last.pt",
                                      epoch=1, step=11, val_loss=None, bleu=None,
                                      size_bytes=1000, saved_at=1.0))
        app.dashboard.inbox.put(RunFinished(status="stopped", seconds=20.0))
        await until(pilot, lambda: app.state.status == "stopped")
        app.dashboard.refresh_panels(force=True)
        await pilot.pause()
        assert "state saved in checkpoint_last.pt (step 11)" in text_of(app, StatusBar)
        assert "Saved  checkpoint_last.pt step 11" in text_of(app, "#training")


@scenario
async def test_attached_mid_run_the_loss_page_shows_the_whole_run_and_the_numbers_beside_it(
        tmp_path):
    run_dir = tmp_path / "live"
    events = finished_run_events()
    half = next(i for i, (_, e) in enumerate(events) if isinstance(e, BatchProgress)
                and e.epoch == 3)
    run_dir.mkdir()
    path = run_dir / "events.jsonl"
    path.write_text("".join(jsonl_line(e, at) for at, e in events[:half]), encoding="utf-8")
    app = TransformerApp(attach=run_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.state.batch is not None and app.state.batch.step == 60)
        with open(path, "a", encoding="utf-8") as f:  # the run goes on while we watch
            f.writelines(jsonl_line(e, at) for at, e in events[half:])
        await until(pilot, lambda: app.state.status == "finished")
        xs, _ = app.state.train_curve.points()
        assert xs[0] == 1 and xs[-1] == 120  # from the first step, not from attaching
        await pilot.press("2")
        app.dashboard.refresh_panels(force=True)
        await pilot.pause()
        assert "LR" in text_of(app, "#history-lr .history-label")
        assert "3,100" in text_of(app, "#history-tokens_per_second .history-label")
        assert not app.query_one("#history-gnorm").display  # not in this run's events


@scenario
async def test_ctrl_s_saves_a_screenshot_into_the_run_directory(tmp_path):
    run_dir = tmp_path / "demo"
    write_finished_run(run_dir)
    app = TransformerApp(attach=run_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.state.status == "finished")
        await pilot.press("ctrl+s")
        await pilot.pause()
        shots = list(run_dir.glob("screenshot-*.svg"))
        assert len(shots) == 1 and "FINISHED" in shots[0].read_text(encoding="utf-8")


@scenario
async def test_merges_per_second_is_never_0_for_a_phase_that_did_merges():
    app = TransformerApp(probe=FixedProbe())
    async with app.run_test(size=(120, 40)) as pilot:
        app.dashboard.inbox.put(RunStarted(run_dir="saved/x", preset="x", stages=["tokenizer"]))
        app.dashboard.inbox.put(MergeProgress(merges=900, target_merges=900, vocab_size=1000,
                                    target_vocab=1000, per_second=0.0, eta=0.0, elapsed=2.0))
        await until(pilot, lambda: app.state.merges is not None)
        app.dashboard.refresh_panels(force=True)
        await pilot.pause()
        assert "450 merges/s" in text_of(app, "#tokenizer-text")


@scenario
async def test_with_no_arguments_the_app_lists_the_runs_and_enter_attaches(tmp_path):
    saved = tmp_path / "saved"
    write_finished_run(saved / "demo")
    dead = saved / "killed"  # events without an end, no live process: a run that was killed
    dead.mkdir(parents=True)
    lines = [jsonl_line(e, at) for at, e in finished_run_events()]
    (dead / "events.jsonl").write_text("".join(lines[: len(lines) // 2]), encoding="utf-8")
    app = TransformerApp(show_runs=True, runs_dir=saved, probe=FixedProbe())
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, RunsScreen)
                    and app.screen.query_one(DataTable).row_count == 2)
        table = app.screen.query_one(DataTable)
        # each row without its first cell, the comparison mark
        rows = {table.get_row_at(i)[1]: [str(cell) for cell in table.get_row_at(i)[1:]]
                for i in range(2)}
        assert rows["demo"][1:7] == ["demo", "finished", "4/4", "120", "2.4779", "28.00"]
        assert rows["killed"][2] == "dead"
        table.move_cursor(row=list(rows).index("killed"))
        await pilot.press("enter")
        await until(pilot, lambda: app.state.status == "dead")
        assert app.dashboard.followed == dead
        status = text_of(app, StatusBar)
        assert "DEAD" in status and "last checkpoint checkpoint_last.pt" in status

        await pilot.press("l")  # the list again; n: a new run, from the preset picker
        await until(pilot, lambda: isinstance(app.screen, RunsScreen))
        await pilot.press("n")
        await until(pilot, lambda: not isinstance(app.screen, RunsScreen))
        assert app.query_one("#start").display and app.focused is app.query_one("#preset")
        assert app.dashboard.followed is None and app.state.status == "idle"


@scenario
async def test_the_prep_stages_progress_shows_while_they_run_then_gives_way_to_the_tokenizer():
    from engine.events import DownloadProgress, EncodeProgress, WordCountProgress

    app = TransformerApp(probe=FixedProbe())
    stages = ["data", "tokenizer", "encode"]
    async with app.run_test(size=(120, 40)) as pilot:
        app.dashboard.inbox.put(RunStarted(run_dir="saved/x", preset="full", stages=stages))
        app.dashboard.inbox.put(StageStarted(stage="data", index=1, total=3))
        app.dashboard.inbox.put(DownloadProgress(what="Downloading data", done=300 * 2**20,
                                       total=600 * 2**20, unit="B", per_second=10 * 2**20,
                                       eta=30.0, elapsed=30.0))
        await until(pilot, lambda: app.state.prep is not None)
        app.dashboard.refresh_panels(force=True)
        await pilot.pause()
        shown = text_of(app, "#tokenizer-text")
        assert "Fetch" in shown and "50.0%" in shown and "300.0 MiB/600.0 MiB" in shown
        assert "10.0 MiB/s" in shown and "ETA 30s" in shown

        app.dashboard.inbox.put(StageStarted(stage="tokenizer", index=2, total=3))
        app.dashboard.inbox.put(WordCountProgress(done=10, total=20, per_second=5.0, elapsed=2.0))
        await until(pilot, lambda: app.state.words is not None)
        app.dashboard.refresh_panels(force=True)
        await pilot.pause()
        assert "Fetch" not in text_of(app, "#tokenizer-text")  # the stage it belonged to ended

        app.dashboard.inbox.put(StageStarted(stage="encode", index=3, total=3))
        app.dashboard.inbox.put(EncodeProgress(split="train", done=1_500_000, total=4_500_000,
                                     per_second=40_000.0, eta=75.0, elapsed=37.5))
        await until(pilot, lambda: isinstance(app.state.prep, EncodeProgress))
        app.dashboard.refresh_panels(force=True)
        await pilot.pause()
        shown = text_of(app, "#tokenizer-text")
        assert "Encode" in shown and "33.3%" in shown and "1.50M/4.50M" in shown
        assert "train  40,000 pairs/s  ETA 1m15s" in shown


@scenario
async def test_the_dashboard_owns_the_workers_that_follow_its_run_and_ends_them_when_it_leaves_it(
        tmp_path):
    """Following a run is two thread workers of the dashboard screen (events and process);
    another run, or none, ends them: no worker goes on reading a run that is not shown."""
    from textual.worker import WorkerState

    saved = tmp_path / "saved"
    for name in ("a", "b"):
        write_finished_run(saved / name, recorded_dir=f"saved/{name}")
    app = TransformerApp(attach=saved / "a", runs_dir=saved)

    def following() -> list[str]:
        return sorted(w.name for w in app.workers if w.node is app.dashboard
                      and w.group in ("events", "process") and w.state == WorkerState.RUNNING)

    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.state.status == "finished")
        assert following() == [f"events of {saved / 'a'}", f"process of {saved / 'a'}"]
        app.dashboard.attach_to(saved / "b")
        await until(pilot, lambda: following() == [f"events of {saved / 'b'}",
                                                   f"process of {saved / 'b'}"], 5)
        await until(pilot, lambda: app.state.status == "finished")
        assert app.state.run_dir == "saved/b"  # b's history is shown
        app.dashboard.choose_new_run()
        await until(pilot, lambda: following() == [], 5)
        assert app.state.status == "idle" and app.dashboard.followed is None
