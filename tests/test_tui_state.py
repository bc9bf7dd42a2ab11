"""DashboardState: the story a run's events tell, as the panels will show it."""

from __future__ import annotations

from tui_runs import EPOCHS, finished_run_events

from engine.events import (
    BatchProgress,
    MergeProgress,
    RunFailed,
    RunFinished,
    RunPaused,
    RunResumed,
    RunStarted,
    StageStarted,
)
from tui.state import MAX_CURVE_POINTS, Curve, DashboardState


def replay(events, state=None):
    state = state or DashboardState(clock=lambda: 0.0)
    for at, event in events:
        state.apply(event, at)
    return state


def batch(step, loss=3.0, epoch=1):
    return BatchProgress(epoch=epoch, epochs=2, batch=step, batches=100, step=step, loss=loss,
                         avg_loss=loss, lr=1e-3, batches_per_second=2.0, tokens_per_second=1000.0,
                         eta=10.0, elapsed=1.0)


def test_a_finished_run_ends_finished_with_every_stage_done_and_its_checkpoints():
    state = replay(finished_run_events())
    assert state.status == "finished"
    assert [s.status for s in state.stages.values()] == ["done", "done", "reused", "done", "done",
                                                         "done"]
    assert state.merges.merges == state.merges.target_merges
    assert len(state.summaries) == EPOCHS
    assert set(state.checkpoints) == {"checkpoint_last.pt", "checkpoint_best.pt",
                                      "model_epoch_2.pt", "model_epoch_4.pt"}
    assert state.checkpoints["checkpoint_last.pt"].epoch == EPOCHS  # the later save replaced it
    assert state.max_tokens == 2048
    assert state.elapsed() == finished_run_events()[-1][1].seconds
    assert any("run finished" in line for line in state.log)
    # the smoothed curve falls as the fixture's loss does
    assert state.train_curve.ys[0] > state.train_curve.ys[-1]


def test_progress_events_change_the_panels_parts_but_do_not_flood_the_log():
    state = DashboardState(clock=lambda: 0.0)
    state.apply(RunStarted(run_dir="saved/x", preset="x", stages=["tokenizer"]), 0.0)
    logged = state.log_total
    for merges in range(1000):
        state.apply(MergeProgress(merges=merges, target_merges=1000, vocab_size=merges,
                                  target_vocab=1100, per_second=500.0, eta=1.0,
                                  elapsed=merges / 500), merges / 500)
    assert state.log_total == logged
    assert state.versions["tokenizer"] >= 1000
    assert 0 < len(state.merge_rates.ys) <= 240  # the sparkline's history stays bounded


def test_pause_and_resume_events_set_the_state_and_a_stop_request_sticks():
    state = DashboardState(clock=lambda: 0.0)
    state.apply(RunStarted(run_dir="d", preset="p", stages=["train"]), 0.0)
    state.apply(RunPaused(stage="train"), 1.0)
    assert state.status == "paused"
    state.apply(RunResumed(stage="train", paused_seconds=2.0), 3.0)
    assert state.status == "running"
    state.stopping()
    state.apply(RunPaused(stage="train"), 4.0)
    assert state.status == "stopping"  # nothing but the end of the run leaves "stopping"
    state.apply(RunFinished(status="stopped", seconds=5.0), 5.0)
    assert state.status == "stopped"


def test_a_failure_keeps_its_reason_and_marks_the_running_stage_failed():
    state = DashboardState(clock=lambda: 100.0)
    state.apply(RunStarted(run_dir="d", preset="p", stages=["data", "tokenizer"]), 10.0)
    state.apply(StageStarted(stage="data", index=1, total=2), 10.0)
    state.apply(RunFailed(stage="data", message="train.en: 3 lines, train.de: 4 lines",
                          details=["Traceback", "  line 1"]), 12.5)
    assert state.status == "failed"
    assert state.reason == "train.en: 3 lines, train.de: 4 lines"
    assert state.stages["data"].status == "failed"
    assert state.stages["data"].seconds == 2.5
    assert state.stages["tokenizer"].status == "pending"
    assert sum("Traceback" in line for line in state.log) == 1
    state.process_seen("dead")  # the process is gone, as it should be: the failure stands
    assert state.status == "failed"
    assert state.reason == "train.en: 3 lines, train.de: 4 lines"


def test_a_config_error_is_a_failure_before_anything_started():
    state = DashboardState(clock=lambda: 0.0)
    state.config_error("nope.toml: preset file not found")
    assert (state.status, state.reason) == ("failed", "nope.toml: preset file not found")
    assert not state.active


def test_the_loss_curve_stays_bounded_and_forgets_steps_a_restart_goes_back_over():
    state = DashboardState(clock=lambda: 0.0)
    for step in range(1, 3 * MAX_CURVE_POINTS):
        state.apply(batch(step), 0.0)
    assert len(state.train_curve.xs) <= MAX_CURVE_POINTS
    assert state.train_curve.xs == sorted(state.train_curve.xs)
    state.apply(batch(50, loss=9.0), 0.0)  # resumed from an early checkpoint
    xs, ys = state.train_curve.points()
    assert max(xs) == 50
    assert ys[-1] == 9.0  # smoothing starts over with the new run


def test_a_curve_halves_its_resolution_when_full():
    curve = Curve()
    for x in range(11):
        curve.add(x, x, limit=4)
    assert len(curve.xs) <= 4 and curve.stride > 1
    assert curve.xs[0] == 0
    assert curve.points()[0][-1] == 10  # the latest point is shown, kept or not


def test_a_run_eta_adds_the_epochs_still_to_come():
    state = DashboardState(clock=lambda: 0.0)
    state.apply(batch(50), 0.0)  # 50 of 100 batches left at 2 batch/s: 10 s by the event
    assert state.run_eta() == 10.0 + 1 * (100 / 2.0)


def test_starting_in_another_run_dir_forgets_the_previous_run_but_a_resume_keeps_it():
    state = replay(finished_run_events("saved/demo"))
    state.starting("demo", "saved/demo")  # resume in the same dir: the history stays
    assert state.checkpoints and state.summaries and state.train_curve.xs
    state.starting("other", "saved/other")
    assert not state.checkpoints and not state.summaries and not state.train_curve.xs
    assert state.merges is None and state.batch is None


def test_a_run_whose_process_is_gone_without_an_end_is_dead_and_its_clock_stops():
    events = finished_run_events("saved/demo")
    state = replay(events[: len(events) // 2])  # killed half-way through training
    assert state.status == "running"
    state.process_seen("dead", "pid 4242 on vm")
    assert (state.status, state.reason) == ("dead", "pid 4242 on vm")
    assert state.elapsed() == state.last_event_at - events[0][0]  # not growing with the clock
    assert state.stop_checkpoint().name == "checkpoint_last.pt"
    assert "press r to resume" in state.log[-1]


def test_a_live_run_without_batches_for_long_is_stalled_until_batches_come_again():
    events = finished_run_events("saved/demo")
    state = replay(events[: len(events) // 2])
    state.process_seen("stalled")
    assert state.status == "stalled" and state.active
    state.process_seen("running")
    assert state.status == "running"
