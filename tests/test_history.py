"""engine.history: one fold of a run's events, what the app, status, the run list and
TensorBoard read. A damaged line never changes what the fold says."""

from __future__ import annotations

import json
import math
import os

from tui_runs import BATCHES, EPOCHS, STAGES, T0, finished_run_events, jsonl_line

from engine import events as ev
from engine import runs
from engine.events import (
    BatchProgress,
    EpochSummary,
    Notice,
    RunFailed,
    RunFinished,
    RunPaused,
    RunResumed,
    RunStarted,
)
from engine.history import NOTICES, HistoryFile, RunHistory, RunState, read_history


def fold(events, history=None) -> RunHistory:
    history = history or RunHistory()
    for at, event in events:
        history.apply(event, at)
    return history


def batch(step, loss=3.0, epoch=1, elapsed=1.0):
    return BatchProgress(epoch=epoch, epochs=2, batch=step, batches=100, step=step, loss=loss,
                         avg_loss=loss, lr=1e-3, batches_per_second=2.0, tokens_per_second=1000.0,
                         eta=10.0, elapsed=elapsed)


def summary(epoch, step, val_loss, bleu=None):
    return EpochSummary(epoch=epoch, epochs=4, step=step, train_loss=3.0, train_ppl=20.1,
                        val_loss=val_loss, val_ppl=math.exp(val_loss), bleu=bleu,
                        epoch_seconds=1.0, total_seconds=float(epoch))


def test_a_finished_run_folds_into_what_every_reader_needs():
    events = finished_run_events("saved/demo")
    history = fold(events)
    assert history.state == RunState.FINISHED and history.ended and not history.paused
    assert (history.preset, history.run_dir, history.stages) == ("demo", "saved/demo", STAGES)
    assert (history.epoch, history.epochs, history.step) == (EPOCHS, EPOCHS, EPOCHS * BATCHES)
    assert [s.epoch for s in history.summaries] == list(range(1, EPOCHS + 1))
    # the train curve, every step (raw) and smoothed; validation and BLEU per epoch
    assert history.train_loss.xs == list(range(1, EPOCHS * BATCHES + 1))
    first = next(e for _, e in events if isinstance(e, BatchProgress))
    assert history.train_loss.ys[0] == first.loss
    assert history.train_curve.ys[0] > history.train_curve.ys[-1]
    assert [step for step, _ in history.validation()] == [30, 60, 90, 120]
    assert history.bleu_points() == [(60, 16.0), (120, 28.0)]
    # the best validation loss and BLEU with the step each came at
    val = min(history.validation(), key=lambda p: p[1])
    assert history.best_val_loss == (val[1], val[0]) == (history.summaries[-1].val_loss, 120)
    assert history.best_bleu == (28.0, 120)
    assert history.val_loss == history.summaries[-1].val_loss and history.bleu == 28.0
    assert set(history.checkpoints) == {"checkpoint_last.pt", "checkpoint_best.pt",
                                        "model_epoch_2.pt", "model_epoch_4.pt"}
    assert history.last_checkpoint == "saved/demo/checkpoint_best.pt"  # the last one saved
    # 3,100 tokens/s for the 15 s of each epoch
    assert history.tokens == EPOCHS * 3100.0 * BATCHES / 2.0
    assert history.wall_seconds() == events[-1][1].seconds
    assert history.started_at == T0 and history.ended_at == events[-1][0]
    assert history.events == len(events) and history.last_event_at == events[-1][0]


def test_nothing_is_new_and_any_event_means_a_run_began():
    history = RunHistory()
    assert history.state == RunState.NEW and history.wall_seconds() is None
    history.apply(batch(1), 5.0)  # (its RunStarted line lost)
    assert history.state == RunState.RUNNING and history.events == 1


def test_pause_resume_stop_fail_and_an_end_status_this_version_does_not_know():
    history = fold([(0.0, RunStarted(run_dir="d", preset="p", stages=["train"])),
                    (1.0, RunPaused(stage="train"))])
    assert history.state == RunState.PAUSED and history.paused
    history.apply(RunResumed(stage="train", paused_seconds=1.0), 2.0)
    assert history.state == RunState.RUNNING
    history.apply(RunFinished(status="stopped", seconds=3.0), 3.0)
    assert (history.state, history.seconds, history.ended_at) == (RunState.STOPPED, 3.0, 3.0)
    history.apply(RunPaused(stage="train"), 4.0)  # an end, once read, stands
    assert history.state == RunState.STOPPED
    history.apply(RunStarted(run_dir="d", preset="p", stages=["train"]), 10.0)  # resumed
    assert (history.state, history.seconds, history.ended_at) == (RunState.RUNNING, None, None)
    history.apply(RunFailed(stage="train", message="out of disk"), 12.5)
    assert (history.state, history.message, history.seconds) == (RunState.FAILED,
                                                                 "out of disk", 2.5)
    history.apply(RunStarted(run_dir="d", preset="p", stages=["train"]), 20.0)
    assert history.message == ""
    history.apply(RunFinished(status="vanished", seconds=1.0), 21.0)
    assert history.state == RunState.FAILED


def test_a_resume_from_an_earlier_checkpoint_forgets_the_steps_it_goes_back_over():
    history = fold([(float(s), batch(s, loss=5.0, elapsed=s)) for s in range(1, 101)])
    assert history.tokens == 100 * 1000.0
    history.apply(batch(40, loss=9.0, elapsed=0.5), 200.0)  # a new process, at step 40
    assert history.rewinds == 1
    assert max(history.train_loss.points()[0]) == 40
    assert history.train_curve.points()[1][-1] == 9.0  # smoothing starts over
    assert history.tokens == 100 * 1000.0 + 500.0  # the new segment's tokens are added


def test_a_later_epoch_summary_of_an_epoch_replaces_it_and_the_best_follows():
    history = fold([(1.0, summary(1, 30, 4.0)), (2.0, summary(2, 60, 3.0, bleu=10.0)),
                    (3.0, summary(3, 90, 3.5, bleu=12.0))])
    assert history.best_val_loss == (3.0, 60) and history.best_bleu == (12.0, 90)
    history.apply(summary(2, 60, 3.8, bleu=9.0), 4.0)  # resumed from epoch 1's checkpoint
    assert [s.epoch for s in history.summaries] == [1, 2]
    assert history.best_val_loss == (3.8, 60) and history.best_bleu == (9.0, 60)
    history.apply(summary(3, 90, float("nan")), 5.0)  # a diverged validation is no best
    assert history.best_val_loss == (3.8, 60)


def test_test_bleu_and_the_last_notices():
    test = ev.TestBleu(checkpoint="averaged.pt", sentences=10, sacrebleu=20.0,
                    sacrebleu_signature="s", paper_bleu=21.0, paper_signature="p", beam=4,
                    length_penalty=0.6, seconds=1.0)
    history = fold([(float(i), Notice(text=f"n{i}", level="warning")) for i in range(NOTICES + 5)]
                   + [(99.0, test)])
    assert history.test == test
    assert [n.text for _, n in history.notices] == [f"n{i}" for i in range(5, NOTICES + 5)]


def damaged_copy(source, target, damage):
    """``source``'s lines with ``damage(lines)`` applied, written to ``target``."""
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    target.write_text("".join(damage(lines)), encoding="utf-8")
    return target


def test_damaged_lines_never_change_what_the_fold_says(tmp_path):
    from tui_runs import write_finished_run

    path = write_finished_run(tmp_path / "demo")
    clean = read_history(path)

    def null_in_the_middle(lines):
        return lines[: len(lines) // 2] + ["null\n"] + lines[len(lines) // 2:]

    def everything_at_once(lines):
        return (["[1, 2]\n", '"x"\n', "{not json\n", '{"event":"FromTheFuture"}\n']
                + null_in_the_middle(lines) + ['{"event":"Notice","text":3}\n'])

    for damage in (null_in_the_middle, everything_at_once):
        copy = damaged_copy(path, tmp_path / f"{damage.__name__}.jsonl", damage)
        file = HistoryFile(copy)
        history = file.update()
        assert file.skipped == {null_in_the_middle: 1, everything_at_once: 6}[damage]
        assert vars(history) == vars(clean)


def test_a_wrong_typed_line_is_the_only_thing_missing(tmp_path):
    from tui_runs import write_finished_run

    path = write_finished_run(tmp_path / "demo")

    def train_loss_as_a_string(lines):
        out = []
        for line in lines:
            payload = json.loads(line)
            if payload["event"] == "EpochSummary" and payload["epoch"] == 2:
                payload["train_loss"] = str(payload["train_loss"])
                line = json.dumps(payload) + "\n"
            out.append(line)
        return out

    file = HistoryFile(damaged_copy(path, tmp_path / "typed.jsonl", train_loss_as_a_string))
    history = file.update()
    assert file.skipped == 1
    assert history.state == RunState.FINISHED
    assert [s.epoch for s in history.summaries] == [1, 3, 4]


def test_the_file_is_folded_as_it_grows_and_anew_when_a_new_run_replaces_it(tmp_path):
    path = tmp_path / "events.jsonl"
    events = finished_run_events("saved/demo")
    half = len(events) // 2
    path.write_text("".join(jsonl_line(e, at) for at, e in events[:half]), encoding="utf-8")
    file = HistoryFile(path)
    assert file.update().state == RunState.RUNNING
    with open(path, "a", encoding="utf-8") as f:
        f.writelines(jsonl_line(e, at) for at, e in events[half:])
    assert vars(file.update()) == vars(fold([(round(at, 3), e) for at, e in events]))
    replacement = tmp_path / "new.jsonl"
    replacement.write_text(jsonl_line(RunStarted(run_dir="d", preset="new", stages=["data"]),
                                      T0 + 1e4), encoding="utf-8")
    os.replace(replacement, path)
    history = file.update()
    assert (history.preset, history.summaries, history.state) == ("new", [], RunState.RUNNING)


def test_the_run_list_and_the_fold_share_one_state_enum():
    assert runs.RunState is RunState


def test_the_run_list_reads_a_run_directorys_history_once_then_what_is_appended(tmp_path):
    from tui_runs import write_finished_run

    run_dir = tmp_path / "demo"
    path = write_finished_run(run_dir)
    history = runs.run_history(run_dir)
    assert vars(history) == vars(read_history(path))
    assert runs.run_history(run_dir) is history  # nothing appended: nothing read again
    with open(path, "a", encoding="utf-8") as f:
        f.write("null\n" + jsonl_line(Notice(text="appended"), T0 + 1e4))
    assert runs.run_history(run_dir).notices[-1][1].text == "appended"
    assert runs.summarize(run_dir).state == RunState.FINISHED


def test_cpu_time_and_the_tokens_seen_at_each_update():
    """cpu_seconds: the run process's last report (an older engine's events carry none), and
    a new start's process counts anew; the tokens seen follow the updates, and a resume from
    an earlier checkpoint forgets those of the updates it goes back over."""
    started = RunStarted(run_dir="r", preset="p", stages=["train"])
    history = fold([(1.0, started), (2.0, batch(1, elapsed=1.0)), (3.0, batch(2, elapsed=2.0)),
                    (4.0, summary(1, 2, 2.5))])
    assert history.cpu_seconds is None  # older events: no cpu_seconds field
    assert history.tokens_at([1, 2, 1.5]) == [1000.0, 2000.0, 1500.0]
    fold([(5.0, ev.EpochSummary(**{**summary(2, 2, 2.4).__dict__, "cpu_seconds": 7.5}))],
         history)
    assert history.cpu_seconds == 7.5
    fold([(6.0, RunFinished(status="stopped", seconds=5.0, cpu_seconds=9.0))], history)
    assert history.cpu_seconds == 9.0
    fold([(7.0, started), (8.0, batch(1, elapsed=1.0))], history)  # resumed from update 0
    assert history.cpu_seconds is None
    assert history.token_curve.points() == ([1], [3000.0]) and history.tokens == 3000.0
