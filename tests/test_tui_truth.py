"""The app tells the truth at a glance (issue 23), each point tested the way it was found: the
app driven by its Pilot on a run's events, and real tiny runs for what the engine reports.

- paused means paused everywhere: the Stages row says so and its clock stands;
- the numbers shown while paused are the run's (the step it stopped at, not an older one);
- the sparklines follow the run through a resume (they froze at their pre-resume values);
- the loss chart shows the whole train curve, on top, at the height the page has, with round
  ticks; w and y switch to the recent window and a log scale.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
from pilot import scenario
from textual.widgets import Sparkline
from textual_plotext import PlotextPlot
from tiny_runs import tiny_config, train_run

from engine.control import RunControl
from engine.events import (
    BatchProgress,
    CheckpointSaved,
    EpochSummary,
    RunPaused,
    RunResumed,
    RunStarted,
    StageStarted,
)
from tui.app import TransformerApp
from tui.widgets.loss import HistoryRow
from tui.widgets.stages import StagesPanel

pytestmark = pytest.mark.usefixtures("in_a_fresh_directory")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def progress(step: int, loss: float = 3.0, steps: int = 100, lr: float | None = None) -> BatchProgress:
    return BatchProgress(epoch=1, epochs=1, batch=step, batches=steps, step=step, loss=loss,
                         avg_loss=loss, lr=lr if lr is not None else 1e-4 * step,
                         batches_per_second=2.0, tokens_per_second=1000.0 + step, eta=1.0,
                         elapsed=float(step), gnorm=1.0 + step / 10)


def training_started(app, clock) -> None:
    app.state.apply(RunStarted(run_dir="saved/demo", preset="sample", stages=["train"]),
                    clock.now)
    app.state.apply(StageStarted(stage="train", index=1, total=1), clock.now)


def stages_row(app) -> str:
    return str(app.dashboard.query_one(StagesPanel).render())


@scenario
async def test_paused_shows_on_the_stages_row_and_its_clock_stands():
    clock = Clock()
    app = TransformerApp(attach=None, clock=clock)
    async with app.run_test(size=(120, 40)) as pilot:
        training_started(app, clock)
        clock.now += 65
        app.state.apply(progress(5), clock.now)
        app.state.apply(RunPaused(stage="train"), clock.now)
        clock.now += 600  # ten minutes paused
        app.dashboard.refresh_panels(force=True)
        await pilot.pause()
        row = stages_row(app)
        assert "paused" in row and "running" not in row and "1m05s" in row
        assert "PAUSED" in str(app.dashboard.query_one("#status").render())
        app.state.apply(RunResumed(stage="train", paused_seconds=600), clock.now)
        clock.now += 5
        app.dashboard.refresh_panels(force=True)
        await pilot.pause()
        row = stages_row(app)
        assert "running" in row and "1m10s" in row  # 65 s + 5 s: the pause left out


@scenario
async def test_the_sparklines_follow_the_run_through_a_resume_from_an_earlier_checkpoint():
    clock = Clock()
    app = TransformerApp(attach=None, clock=clock)
    async with app.run_test(size=(120, 40)) as pilot:
        training_started(app, clock)
        for step in range(1, 11):
            app.state.apply(progress(step), clock.now)
        app.dashboard.refresh_panels(force=True)
        await pilot.pause()
        lr_line = app.dashboard.query_one("#history-lr", HistoryRow).query_one(Sparkline)
        assert lr_line.data[-1] == pytest.approx(1e-3)
        # stopped, then resumed from the checkpoint of step 6: the steps after it again
        app.state.apply(RunPaused(stage="train"), clock.now)
        app.state.apply(RunResumed(stage="train", paused_seconds=1), clock.now)
        for step in range(7, 10):
            app.state.apply(progress(step, lr=0.5), clock.now)
            app.dashboard.query_one("#loss").update_from(app.state, force=True)
            await pilot.pause()
            assert lr_line.data[-1] == 0.5 and len(lr_line.data) == step
        label = str(app.dashboard.query_one("#history-lr .history-label").render())
        assert "5.00e-01" in label


def long_run(app, steps: int, clock) -> None:
    training_started(app, clock)
    for step in range(1, steps + 1):
        app.state.apply(progress(step, loss=9.7 * 0.999 ** step + 1.0, steps=steps), clock.now)
        if step % 360 == 0:  # validation, BLEU: the markers once drew lines over the curve
            epoch = step // 360
            app.state.apply(EpochSummary(
                epoch=epoch, epochs=10, step=step, train_loss=3.0, train_ppl=20.0,
                val_loss=3.5 - 0.1 * epoch, val_ppl=30.0, bleu=2.0 * epoch,
                epoch_seconds=60.0, total_seconds=60.0 * epoch), clock.now)


def plot_rows(app) -> list[str]:
    plot = app.dashboard.query_one("#loss-plot", PlotextPlot)
    return str(plot.render()).rstrip("\n").splitlines()


@pytest.mark.parametrize("size, page, rows_at_least", [((120, 40), None, 12), ((80, 24), "2", 12)])
@scenario
async def test_the_loss_chart_shows_the_whole_train_curve_at_the_pages_height(size, page,
                                                                            rows_at_least):
    clock = Clock()
    app = TransformerApp(attach=None, clock=clock)
    async with app.run_test(size=size) as pilot:
        long_run(app, 3600, clock)
        if page:
            await pilot.press(page)
        await pilot.pause()
        app.dashboard.query_one("#loss").update_from(app.state, force=True)
        await pilot.pause()
        rows = plot_rows(app)
        inside = [row for row in rows if "│" in row or "┤" in row]  # the plot's rows
        assert len(inside) >= rows_at_least
        # the train curve (braille) reaches the plot's last columns: drawn to the last step,
        # never hidden under the validation and BLEU markers (o and + are points, not lines)
        braille = [re.sub(r"[^\u2801-\u28ff]", " ", row) for row in inside]
        last_column = max(len(row.rstrip()) for row in braille)
        assert any(len(row.rstrip()) == last_column for row in braille)
        first_column = min(len(row) - len(row.lstrip()) for row in braille if row.strip())
        assert first_column <= 12  # from step 1
        assert sum(row.count("o") for row in inside) <= 10  # one per validation
        # round y ticks: 2, 4, 6, ... (not 9.7, 8.3, 5.4)
        ticks = [float(m) for m in re.findall(r"(\d+(?:\.\d+)?)┤", "\n".join(rows))]
        assert ticks and all(t == round(t) for t in ticks)


@scenario
async def test_w_and_y_switch_the_loss_chart_to_the_recent_steps_and_a_log_scale():
    clock = Clock()
    app = TransformerApp(attach=None, clock=clock)
    async with app.run_test(size=(80, 24)) as pilot:
        long_run(app, 3600, clock)
        await pilot.press("2")
        await pilot.pause()
        screen = app.export_screenshot()  # the keys are in the footer on the loss page
        assert "Window" in screen and "Log&#160;y" in screen
        await pilot.press("w")
        await pilot.pause()
        loss = app.dashboard.query_one("#loss")
        assert loss.window == "recent" and "last 10% of steps" in loss.border_subtitle
        x_ticks = plot_rows(app)[-1].split()
        assert min(int(t.replace(",", "")) for t in x_ticks) >= 3240
        await pilot.press("y")
        await pilot.pause()
        assert loss.log_scale and "log y" in loss.border_subtitle
        await pilot.press("w", "y")
        await pilot.pause()
        assert loss.window == "whole" and not loss.log_scale


def test_while_paused_the_last_step_reported_is_the_step_the_run_is_at(tmp_path, monkeypatch):
    """Progress is reported a few times a second (here: only at an epoch's end); a pause reports
    the update it stops after, so the screen shows the run's own step while it waits."""
    from engine.train.step import UpdateStep

    monkeypatch.setattr("engine.train.loop.PROGRESS_SECONDS", 1e9)
    control = RunControl()
    finish = UpdateStep.finish
    updates = []

    def finish_and_pause_at_the_fifth(self, group):  # a pause asked mid-update, mid-epoch
        updates.append(1)
        if len(updates) == 5:
            control.pause()
            threading.Timer(1.0, control.stop).start()  # a stop while paused saves a checkpoint
        return finish(self, group)

    monkeypatch.setattr(UpdateStep, "finish", finish_and_pause_at_the_fifth)
    status, events = train_run(tmp_path / "run", tiny_config(training__epochs=50), control)
    assert status == "stopped"
    paused_at = next(i for i, e in enumerate(events) if isinstance(e, RunPaused))
    reported = [e for e in events[paused_at:] if isinstance(e, BatchProgress)]
    saved = [e for e in events if isinstance(e, CheckpointSaved)
             and e.name == "checkpoint_last.pt"][-1]
    assert reported and reported[-1].step == saved.step == 5


@scenario
async def test_start_where_a_run_is_live_refuses_on_screen_names_its_owner_and_offers_attach(
        tmp_path):
    """`transformer-tui --start` on the directory of a run live elsewhere (here: a process that
    holds its lock, before any checkpoint) said "starting" and silently followed the other run;
    the refusal was only in the new run's run.log."""
    import os
    import subprocess
    import sys

    from tui.screens.dialogs import ChoiceScreen

    run_dir = tmp_path / "saved" / "sample"
    run_dir.mkdir(parents=True)
    owner = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from engine.runs import RunLock; "
         "RunLock.acquire(sys.argv[1]); print('held', flush=True); time.sleep(120)",
         str(run_dir)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert owner.stdout.readline().strip() == "held"
        app = TransformerApp(preset="sample", start=True)
        async with app.run_test(size=(120, 40)) as pilot:
            for _ in range(100):
                if isinstance(app.screen, ChoiceScreen):
                    break
                await pilot.pause(0.05)
            assert isinstance(app.screen, ChoiceScreen)
            question = str(app.screen.query_one("#question").render())
            assert f"pid {owner.pid}" in question and "nothing was started" in question
            assert app.state.status == "idle" and app.dashboard.followed is None
            assert not (run_dir / "run.log").exists()  # no run process was started
            await pilot.press("a")
            await pilot.pause()
            # attached to the live run instead (the relative run dir of a start from here)
            assert app.dashboard.followed.resolve() == run_dir.resolve()
    finally:
        owner.kill()
        owner.wait()


@scenario
async def test_dialogs_keep_the_footer_with_their_keys():
    from tui.screens.dialogs import ChoiceScreen, ConfirmScreen

    app = TransformerApp(attach=None)
    async with app.run_test(size=(80, 24)) as pilot:
        answers = []
        app.push_screen(ConfirmScreen("Stop the run?", yes="Stop"), answers.append)
        await pilot.pause()
        screen = app.export_screenshot()
        assert "Yes" in screen and "Cancel" in screen  # the footer, under the dialog
        await pilot.press("y")
        app.push_screen(ChoiceScreen("A run is live.", [("leave", "Leave it running", "l"),
                                                        ("stop", "Stop it", "s")]),
                        answers.append)
        await pilot.pause()
        screen = app.export_screenshot()
        assert "Leave&#160;it&#160;running" in screen and "Stop&#160;it" in screen
        await pilot.press("s")
        await pilot.pause()
        assert answers == [True, "stop"]


def test_scrollbars_draw_whole_cells_not_eighth_blocks():
    """The log's scrollbar showed stray characters (eighth-block glyphs at the thumb's ends) in
    terminals and fonts without them."""
    from textual.scrollbar import ScrollBar

    import tui.app  # noqa: F401  (sets the app's scrollbar renderer)

    for position in (0, 3.3, 17.5, 40):
        bar = ScrollBar.renderer.render_bar(size=20, virtual_size=80, window_size=20,
                                            position=position)
        glyphs = "".join(segment.text for segment in bar.segments)
        assert not set(glyphs) & set("▁▂▃▄▅▆▇▉▊▋▌▍▎▏"), glyphs


@scenario
async def test_the_validation_samples_and_test_bleu_are_in_the_log():
    """The sample translations were printed headless but not in the app's Log."""
    from engine.events import SampleTranslations, TestBleu

    clock = Clock()
    app = TransformerApp(attach=None, clock=clock)
    async with app.run_test(size=(120, 40)) as pilot:
        training_started(app, clock)
        app.state.apply(SampleTranslations(epoch=3, step=120, samples=[
            {"source": "A dog runs.", "reference": "Ein Hund rennt.", "hypothesis": "Ein Hund läuft."}]),
            clock.now)
        app.state.apply(TestBleu(checkpoint="saved/demo/averaged.pt", sentences=1000,
                                 sacrebleu=38.61, sacrebleu_signature="nrefs:1|tok:13a",
                                 paper_bleu=39.2, paper_signature="tok:13a+compound-split",
                                 beam=4, length_penalty=0.6, seconds=30.0, role="averaged",
                                 averaged_from=["checkpoint_update_3500.pt",
                                                "checkpoint_update_3600.pt"],
                                 lowercase_bleu=38.94, lowercase_signature="case:lc"), clock.now)
        await pilot.pause()
        log = "\n".join(app.state.log)
        assert "samples after epoch 3 (step 120):" in log
        assert "src: A dog runs." in log and "ref: Ein Hund rennt." in log
        assert "hyp: Ein Hund läuft." in log
        assert ("test BLEU of the averaged model (the mean of checkpoint_update_3500.pt, "
                "checkpoint_update_3600.pt): 38.61 sacreBLEU, 38.94 lowercased, 39.20 the "
                "paper's way") in log


@scenario
async def test_an_svg_screenshot_keeps_the_space_after_a_glyph():
    """The README's SVG showed '✓data' and '2,048tokens/batch': a text segment that starts with
    a space lost it in the SVG. A glyph and its space now stand in one segment."""
    from tui_runs import write_finished_run

    write_finished_run(Path("saved/demo"))
    app = TransformerApp(attach="saved/demo")
    async with app.run_test(size=(120, 40)) as pilot:
        for _ in range(200):
            if app.state.status == "finished":
                break
            await pilot.pause(0.05)
        app.dashboard.refresh_panels(force=True)
        await pilot.pause()
        svg = app.export_screenshot()
        assert "✓&#160;</text>" in svg  # the Stages marks: "✓ " then "data"
        assert "⣿&#160;</text>" in svg  # the loss legend's glyph
        assert "tokens/batch" not in svg


@scenario
async def test_what_the_run_ran_with_shows_in_the_header_and_the_log():
    clock = Clock()
    app = TransformerApp(attach=None, clock=clock)
    async with app.run_test(size=(120, 40)) as pilot:
        app.state.apply(RunStarted(run_dir="saved/demo", preset="sample", stages=["train"],
                                   versions={"torch": "2.13.0", "cuda": "12.8",
                                             "device": "NVIDIA H100 80GB HBM3"}), clock.now)
        app.dashboard.refresh_panels(force=True)
        await pilot.pause()
        header = str(app.dashboard.query_one("#status").render())
        assert "sample → saved/demo" in header and "torch 2.13.0, CUDA 12.8" in header
        assert any("ran with torch 2.13.0, CUDA 12.8, NVIDIA H100" in line
                   for line in app.state.log)
