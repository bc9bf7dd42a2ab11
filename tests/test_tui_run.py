"""The app driving real runs (the detached run process it starts: the real tokenizer child, real
torch training), with Pilot: start the sample preset and let it finish; pause and resume; stop,
and the checkpoint it leaves loads; resume from it in the checkpoints table; quit while running
stops cleanly; keys stay responsive while stages run.

The sample preset is shrunk with --set overrides (fewer pairs, a smaller model, two epochs) so
that a run takes seconds on two CPU cores; it still goes through every stage of the engine.
"""

from __future__ import annotations

import asyncio
import functools
import time

from textual import events
from textual.widgets import Button, DataTable

from tui.app import TransformerApp
from tui.screens.dialogs import ConfirmScreen
from tui.widgets.status import StatusBar

# Small enough to run in seconds, big enough that each stage emits progress.
SMALL = [
    "data.train_size=1200", "data.valid_size=60", "data.test_size=60",
    "tokenizer.vocab_size=500",
    "model.d_model=32", "model.ffn_hidden=64", "model.n_head=2", "model.n_layers=1",
    "training.epochs=2", "training.max_tokens=512", "training.warmup=50",
    "training.checkpoint_every=1",
    "eval.beam=1", "eval.bleu_every=1", "eval.bleu_samples=20",
]
# Long enough to pause, resume and stop in the middle of training.
LONGER = [item for item in SMALL if not item.startswith("training.epochs")] + [
    "training.epochs=1000"]  # never reached: the test stops it


def scenario(test):
    @functools.wraps(test)
    def run(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return run


async def until(pilot, condition, seconds: float = 120.0, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    app = pilot.app
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {seconds:.0f}s: {what} "
                                 f"(state {app.state.status} {app.state.reason})")
        await pilot.pause(0.05)
    await pilot.pause()


async def key_latency(app, key: str, page: str) -> float:
    """Seconds from a key arriving (as the terminal driver delivers it) to its effect."""
    main = app.query_one("#main")
    started = time.perf_counter()
    app._driver.send_message(events.Key(key, key))
    while not main.has_class(f"-page-{page}"):
        await asyncio.sleep(0.001)
    return time.perf_counter() - started


async def measure_keys(app, latencies: list[float], while_true) -> None:
    """Switch pages back and forth while something runs."""
    while while_true():
        latencies.append(await key_latency(app, "2", "loss"))
        latencies.append(await key_latency(app, "1", "run"))
        await asyncio.sleep(0.25)


@scenario
async def test_start_the_sample_preset_and_let_it_finish(tmp_path):
    run_dir = tmp_path / "sample"
    app = TransformerApp(preset="sample", overrides=SMALL, run_dir=run_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("s")
        # focus never rests on a button (Quit): Down, Enter on the checkpoints page quits nothing
        assert not isinstance(app.focused, Button)
        await pilot.press("3", "down", "enter")
        assert app.is_running and not isinstance(app.screen, ConfirmScreen)
        await pilot.press("1")
        # a quiet machine may finish this small run before the first look
        await until(pilot, lambda: app.state.status != "idle", 30, "the start of the run")
        await until(pilot, lambda: not app.state.active, 300, "the end of the run")
        app.dashboard.refresh_panels(force=True)
        await pilot.pause()

        assert app.state.status == "finished", app.state.reason
        assert "FINISHED" in str(app.query_one(StatusBar).render())
        assert [s.status for s in app.state.stages.values()] == ["done"] * 6
        merges = app.state.merges
        assert merges is not None and merges.merges == merges.target_merges
        assert "Merges" in str(app.query_one("#tokenizer-text").render())
        training = str(app.query_one("#training").render())
        assert "Epoch  2/2" in training and "Ended  finished" in training
        table = app.query_one("#checkpoint-table", DataTable)
        names = {table.get_row_at(i)[0] for i in range(table.row_count)}
        assert "checkpoint_last.pt" in names
        assert (run_dir / "checkpoint_last.pt").is_file()


def _summary(latencies: list[float]) -> str:
    if not latencies:
        return "no presses (stage too short)"
    ordered = sorted(latencies)
    return (f"n={len(ordered)} median {1000 * ordered[len(ordered) // 2]:.1f} ms "
            f"max {1000 * ordered[-1]:.1f} ms")


@scenario
async def test_pause_resume_stop_resume_from_a_checkpoint_and_quit_while_running(tmp_path):
    import torch

    run_dir = tmp_path / "paused"
    app = TransformerApp(preset="sample", overrides=LONGER, run_dir=run_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("s")
        await until(pilot, lambda: app.state.batch is not None and app.state.batch.step >= 3
                    or not app.state.active, 180, "training progress")
        assert app.state.status == "running", app.state.reason

        # keys stay responsive while the model trains in the engine's thread
        latencies: list[float] = []
        until_time = time.monotonic() + 2.0
        await measure_keys(app, latencies, lambda: time.monotonic() < until_time)
        print(f"\nkey press to page shown, while training: {_summary(latencies)}")
        assert max(latencies) < 1.0  # generous for a shared CI machine; the target is 100 ms,
        # measured by benchmarks/bench_tui.py

        await pilot.press("p")
        await until(pilot, lambda: app.state.status == "paused", 10, "paused")
        assert str(app.query_one("#pause").label) == "Resume"
        await pilot.pause(1.0)  # the batch in flight still reports
        step = app.state.batch.step
        await pilot.pause(1.5)
        assert app.state.batch.step == step, "training went on while paused"

        await pilot.press("p")
        await until(pilot, lambda: app.state.batch.step > step, 60, "progress after resume")
        assert app.state.status == "running"

        await pilot.press("x")  # asks first
        await pilot.pause()
        assert app.state.status == "running"
        await pilot.press("y")
        await until(pilot, lambda: not app.state.active, 60, "stopped")
        assert app.state.status == "stopped"
        assert "STOPPED" in str(app.query_one(StatusBar).render())
        checkpoint = torch.load(run_dir / "checkpoint_last.pt", weights_only=True)
        assert checkpoint["step"] >= step
        stopped_at = checkpoint["step"]

        # select checkpoint_last.pt in the table: "resume from here"
        await until(pilot, lambda: app.query_one("#checkpoint-table", DataTable).row_count > 0,
                    5, "checkpoint rows")
        table = app.query_one("#checkpoint-table", DataTable)
        table.focus()
        names = [table.get_row_at(i)[0] for i in range(table.row_count)]
        table.move_cursor(row=names.index("checkpoint_last.pt"))
        await pilot.press("enter")
        await pilot.pause()
        await pilot.press("y")
        await until(pilot, lambda: app.state.status == "running", 60, "resumed run")
        await until(pilot, lambda: app.state.batch.step > stopped_at, 120, "progress after resume")
        assert any("resuming from" in line for line in app.state.log)

        # quit while it runs: a question first; Esc keeps it running, "stop it" stops it cleanly
        await pilot.press("q")
        await pilot.pause()
        assert app.is_running and app.state.status == "running"
        await pilot.press("escape")
        await pilot.pause()
        assert app.state.status == "running"
        await pilot.press("q", "s")
        await until(pilot, lambda: not app.is_running, 60, "exit")
    assert app.state.status == "stopped"
    # the resumed run continued from the saved step, and its stop saved again
    assert torch.load(run_dir / "checkpoint_last.pt", weights_only=True)["step"] > stopped_at


@scenario
async def test_a_run_that_fails_shows_the_reason(tmp_path):
    src, tgt = tmp_path / "train.en", tmp_path / "train.de"
    src.write_text("a house\na dog\na cat\n", encoding="utf-8")
    tgt.write_text("ein Haus\nein Hund\n", encoding="utf-8")  # one line short
    overrides = ["data.source=local", f"data.train_src={src}", f"data.train_tgt={tgt}",
                 f"data.valid_src={src}", f"data.valid_tgt={tgt}", "data.train_size=0",
                 "data.valid_size=0", "data.test_size=0"]
    app = TransformerApp(preset="sample", overrides=overrides, run_dir=tmp_path / "run")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("s")
        await until(pilot, lambda: app.state.status == "failed", 60, "failed")
        assert app.state.stages["data"].status == "failed"
        assert "train.en" in app.state.reason or "train.de" in app.state.reason
        assert app.state.reason in str(app.query_one(StatusBar).render())


@scenario
async def test_quit_confirmed_after_the_run_ended_still_quits(tmp_path):
    app = TransformerApp(preset="sample", overrides=SMALL, run_dir=tmp_path / "run")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("s")
        await until(pilot, lambda: app.state.status != "idle", 30, "the start of the run")
        if app.state.active:
            await pilot.press("q")  # the question opens while the run is active...
            await until(pilot, lambda: not app.state.active, 300, "the end of the run")
            await pilot.press("l")  # ...and is answered after it ended
        else:  # too fast to ask: quitting an ended run needs no question
            await pilot.press("q")
        await until(pilot, lambda: not app.is_running, 10, "exit")
    assert app.state.status == "finished"


@scenario
async def test_a_new_app_resuming_a_stopped_run_shows_its_whole_history(tmp_path):
    run_dir = tmp_path / "history"
    first = TransformerApp(preset="sample", overrides=LONGER, run_dir=run_dir)
    async with first.run_test(size=(120, 40)) as pilot:
        await pilot.press("s")
        await until(pilot, lambda: first.state.batch is not None and first.state.batch.step >= 8
                    or not first.state.active, 180, "training progress")
        await pilot.press("x", "y")
        await until(pilot, lambda: not first.state.active, 60, "stopped")
    stopped_at = first.state.batch.step
    assert first.state.status == "stopped"

    # later, another app: the earlier run's checkpoints are offered; r on checkpoint_last.pt
    app = TransformerApp(preset="sample", overrides=LONGER, run_dir=run_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.query_one("#checkpoint-table", DataTable)
        await until(pilot, lambda: table.row_count > 0, 10, "the earlier checkpoints")
        await pilot.press("3")
        names = [table.get_row_at(i)[0] for i in range(table.row_count)]
        table.move_cursor(row=names.index("checkpoint_last.pt"))
        await pilot.press("r", "y")
        await until(pilot, lambda: app.state.batch is not None
                    and app.state.batch.step > stopped_at + 2, 120, "progress after resume")
        xs, _ = app.state.train_curve.points()
        assert xs[0] <= 2, "the loss curve starts at the resume step, not at the run's start"
        assert [x for x in xs if x <= stopped_at], "the steps before the resume are not shown"
        await pilot.press("x", "y")
        await until(pilot, lambda: not app.state.active, 60, "stopped")
