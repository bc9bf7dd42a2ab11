"""Training: the loss falls, checkpoints appear, stops resume exactly, bad batches stop the run.

Every test runs the real pipeline (built-in sample data, a real tokenizer trained in its child
process, a tiny Transformer) on the CPU.
"""

from __future__ import annotations

import math
import threading

import pytest
import torch
from tiny_runs import tiny_config, train_run

from engine import checkpoint as ckpt
from engine.control import RunControl
from engine.events import (
    BatchProgress,
    BatchSkipped,
    CheckpointSaved,
    EpochSummary,
    MemorySample,
    Notice,
    RunFailed,
    RunFinished,
    RunPaused,
    RunResumed,
    StageFinished,
)
from engine.pipeline import run
from engine.train import loop as train_loop
from engine.train import noam_lr

pytestmark = pytest.mark.usefixtures("one_thread")


def of(events, kind):
    return [e for e in events if isinstance(e, kind)]


@pytest.fixture
def every_batch(monkeypatch):
    """A BatchProgress for every batch, not a few a second: per-step losses to compare."""
    monkeypatch.setattr(train_loop, "PROGRESS_SECONDS", 0.0)


def test_the_learning_rate_warms_up_then_decays_as_in_the_paper():
    rates = [noam_lr(step, d_model=512, warmup=4000, factor=1.0) for step in (1, 2000, 4000, 16000)]
    assert rates[0] < rates[1] < rates[2] > rates[3]
    assert rates[2] == pytest.approx(512 ** -0.5 * 4000 ** -0.5)
    assert rates[3] == pytest.approx(rates[2] / 2)  # step^-0.5: four times the steps, half the rate


def test_a_small_run_learns_and_leaves_the_checkpoints_the_seed_named(tmp_path, every_batch):
    status, events = train_run(tmp_path, tiny_config(training__epochs=3))
    assert status == "finished"
    summaries = of(events, EpochSummary)
    assert [s.epoch for s in summaries] == [1, 2, 3]
    assert summaries[-1].val_loss < summaries[0].val_loss < math.log(300)
    assert summaries[-1].val_ppl == pytest.approx(math.exp(summaries[-1].val_loss))

    batches = {f.stage: f.info for f in of(events, StageFinished)}["batches"]
    progress = of(events, BatchProgress)
    assert len(progress) == 3 * batches["batches_per_epoch"]
    assert progress[-1].step == 3 * batches["batches_per_epoch"] and progress[-1].lr > 0
    # the gradient norm of the last update, as fairseq's gnorm; no loss scale outside fp16
    assert all(p.gnorm is not None and 0 < p.gnorm < 1e4 for p in progress)
    assert len({p.gnorm for p in progress}) > 1 and all(p.loss_scale is None for p in progress)
    assert 0.5 < batches["padding_efficiency"] <= 1.0

    # keep_last = 1: only the newest periodic checkpoint stays
    names = sorted(p.name for p in tmp_path.glob("*.pt"))
    assert names == ["checkpoint_best.pt", "checkpoint_last.pt", "model_epoch_3.pt"]
    saved = [(c.name, c.epoch) for c in of(events, CheckpointSaved)]
    assert ("model_epoch_1.pt", 1) in saved and ("checkpoint_last.pt", 3) in saved
    last = torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)
    assert (last["epoch"], last["batch_in_epoch"]) == (3, 0)
    assert last["val_loss"] == summaries[-1].val_loss
    assert last["best"] == min(s.val_loss for s in summaries)

    memory = of(events, MemorySample)
    assert memory and memory[0].process_rss > 0 and memory[0].devices == []  # no GPU here
    assert not [n for n in of(events, Notice) if n.level == "warning"]

    # a second run over the same data and tokenizer reuses the encoded ids
    events = []
    assert run(tiny_config(), tmp_path, events.append, until="batches") == "finished"
    assert [f.reused for f in of(events, StageFinished) if f.stage == "encode"] == [True]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_stopped_and_resumed_run_repeats_the_uninterrupted_losses_exactly(tmp_path, every_batch,
                                                                            precision):
    # two batches per update, so the stop also has to respect accumulation groups
    config = tiny_config(training__update_freq=2, training__precision=precision)
    status, events = train_run(tmp_path / "straight", config)
    assert status == "finished"
    straight = [(p.epoch, p.batch, p.step, p.loss) for p in of(events, BatchProgress)]
    straight_val = [s.val_loss for s in of(events, EpochSummary)]

    control = RunControl()

    def stop_mid_epoch_2(event):
        # progress comes once an update (two batches): batch 4 ends the second update of
        # epoch 2, and the stop is honoured before the third
        if isinstance(event, BatchProgress) and (event.epoch, event.batch) == (2, 4):
            control.stop()

    status, first = train_run(tmp_path / "broken", config, control, on_event=stop_mid_epoch_2)
    assert status == "stopped"
    state = torch.load(tmp_path / "broken" / ckpt.LAST, weights_only=True)
    assert (state["epoch"], state["batch_in_epoch"]) == (1, 4)  # finished its group of two

    status, second = train_run(tmp_path / "broken", config, resume="last")
    assert status == "finished"
    model_info = [f.info for f in of(second, StageFinished) if f.stage == "model"][0]
    assert model_info["resumed_from"].endswith(ckpt.LAST) and model_info["batch_in_epoch"] == 4
    resumed = [(p.epoch, p.batch, p.step, p.loss) for p in of(first + second, BatchProgress)]
    assert resumed == straight  # same batches, same dropout, same weights: bit for bit
    assert [s.val_loss for s in of(first + second, EpochSummary)] == straight_val
    assert of(second, EpochSummary)[0].train_loss == of(events, EpochSummary)[1].train_loss


def test_pause_holds_training_between_batches(tmp_path):
    control = RunControl()
    paused = []

    def pause_once(event):
        if isinstance(event, BatchProgress) and not paused:
            paused.append(event.batch)
            control.pause()
            threading.Timer(0.5, control.resume).start()

    status, events = train_run(tmp_path, tiny_config(training__epochs=1), control,
                               on_event=pause_once)
    assert status == "finished"
    assert len(of(events, RunPaused)) == 1 and of(events, RunResumed)[0].paused_seconds >= 0.4
    assert of(events, EpochSummary)[0].epoch_seconds < of(events, RunFinished)[0].seconds


def test_nan_losses_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path):
    status, _ = train_run(tmp_path, tiny_config(training__epochs=1))
    assert status == "finished"
    good = ckpt.load_checkpoint(tmp_path / ckpt.LAST)

    # the same run continued with an absurd learning rate: the weights blow up
    config = tiny_config(training__epochs=3, training__lr_factor=1e12, training__max_bad_batches=3)
    status, events = train_run(tmp_path, config, resume="last")
    assert status == "failed"
    skipped = of(events, BatchSkipped)
    assert [s.in_a_row for s in skipped[-3:]] == [1, 2, 3] and skipped[-1].reason == "nan"
    failure = of(events, RunFailed)[0]
    assert "NaN/inf in 3 batches in a row" in failure.message and "\n" not in failure.message
    kept = ckpt.load_checkpoint(tmp_path / ckpt.LAST)
    assert (kept["epoch"], kept["step"]) == (good["epoch"], good["step"]) == (1, good["step"])
    assert all(torch.isfinite(w).all() for w in kept["model"].values())


def test_resuming_with_another_model_shape_fails_with_one_line(tmp_path):
    status, _ = train_run(tmp_path, tiny_config(training__epochs=1))
    assert status == "finished"
    status, events = train_run(tmp_path, tiny_config(model__d_model=64), resume="last")
    assert status == "failed"
    message = of(events, RunFailed)[0].message
    assert "model.d_model = 32, this run has 64" in message and "\n" not in message

    status, events = train_run(tmp_path / "fresh", tiny_config(), resume="last")
    assert status == "failed" and "no checkpoint_last.pt" in of(events, RunFailed)[0].message


def test_bleu_is_measured_and_can_choose_the_best_checkpoint(tmp_path):
    config = tiny_config(training__epochs=2, eval__bleu_every=1, eval__bleu_samples=6,
                         eval__beam=1, eval__max_len_offset=5, eval__best_by="bleu")
    status, events = train_run(tmp_path, config)
    assert status == "finished"
    bleus = [s.bleu for s in of(events, EpochSummary)]
    assert all(b is not None and 0.0 <= b <= 100.0 for b in bleus)
    best = torch.load(tmp_path / ckpt.BEST, weights_only=True)
    assert best["bleu"] == max(bleus) and best["best"] == max(bleus)


def test_a_dropped_ssh_session_stops_the_headless_command_cleanly_and_it_resumes(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    preset = tmp_path / "tiny.toml"
    preset.write_text(tiny_config(training__epochs=50).to_toml(), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "engine.cli", "--preset", str(preset), "--run-dir",
               str(tmp_path / "run")]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=env)
    lines = []
    for line in child.stdout:
        lines.append(line)
        if " | Batch " in line:  # training is under way
            child.send_signal(signal.SIGHUP)
            break
    lines += child.stdout.readlines()
    assert child.wait(timeout=60) == 0, "".join(lines)
    assert any("Checkpoint saved:" in line and "checkpoint_last.pt" in line for line in lines)
    stopped = ckpt.load_checkpoint(tmp_path / "run" / ckpt.LAST)
    assert stopped["epoch"] < 50

    resumed = subprocess.run(command + ["--resume", "last", "--set",
                                        f"training.epochs={stopped['epoch'] + 1}"],
                             capture_output=True, text=True, env=env, timeout=120)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"Epoch {stopped['epoch'] + 1}/{stopped['epoch'] + 1} Summary:" in resumed.stdout


# --- the recipe: by updates, averaging, test BLEU, samples, patience ------------------------


def test_a_run_by_updates_averages_its_last_5_update_checkpoints_and_reports_test_bleu(tmp_path):
    import io

    from engine.eventlog import read_events
    from engine.events import TestBleu
    from engine.printer import HeadlessPrinter

    config = tiny_config(training__epochs=1, training__max_updates=34,
                         training__checkpoint_every_updates=5, training__keep_last=6,
                         data__test_size=20)
    out = io.StringIO()
    status, events = train_run(tmp_path, config, on_event=HeadlessPrinter(out))
    assert status == "finished"
    # epochs = 1 does not end it: 34 updates do, inside the second epoch (19 batches each)
    assert of(events, BatchProgress)[-1].step == 34 and of(events, EpochSummary)[-1].epoch == 2
    # the time to the end counts the updates left, not the epoch's batches: none at the end
    progress = of(events, BatchProgress)
    assert progress[0].run_eta > progress[0].eta and progress[-1].run_eta == 0
    info = {f.stage: f.info for f in of(events, StageFinished)}["train"]
    assert (info["steps"], info["ended"]) == (34, "max_updates")

    kept = sorted(int(p.stem.rsplit("_", 1)[1]) for p in tmp_path.glob("checkpoint_update_*.pt"))
    # keep_last = 6, no model_epoch_N.pt; the last update's weights are kept too
    assert kept == [10, 15, 20, 25, 30, 34]
    assert not list(tmp_path.glob("model_epoch_*.pt"))
    last_five = [f"checkpoint_update_{n}.pt" for n in (15, 20, 25, 30, 34)]
    averaged = torch.load(tmp_path / ckpt.AVERAGED, weights_only=True)
    assert [p.rsplit("/", 1)[1] for p in averaged["averaged_from"]] == last_five
    weights = [ckpt.load_checkpoint(tmp_path / name)["model"] for name in last_five]
    for key, value in averaged["model"].items():
        torch.testing.assert_close(value, sum(w[key] for w in weights) / 5)

    test = of(events, TestBleu)
    assert len(test) == 1 and test[0].checkpoint.endswith("averaged.pt")
    assert test[0].role == "averaged"
    assert test[0].averaged_from == last_five and test[0].sentences == 20
    assert "tok:13a|" in test[0].sacrebleu_signature
    assert "tok:13a+compound-split" in test[0].paper_signature
    assert "case:lc" in test[0].lowercase_signature
    assert test[0].lowercase_bleu >= test[0].sacrebleu
    assert (info["test_bleu"], info["test_bleu_lowercase"], info["test_paper_bleu"]) == (
        test[0].sacrebleu, test[0].lowercase_bleu, test[0].paper_bleu)
    assert of(list(read_events(tmp_path / "events.jsonl")), TestBleu) == test  # on disk too
    printed = out.getvalue()
    assert "Test BLEU of the averaged model (20 sentences" in printed
    assert "averaged from: checkpoint_update_15.pt, " in printed
    assert f"sacreBLEU:  {test[0].sacrebleu:.2f}" in printed
    assert f"lowercased: {test[0].lowercase_bleu:.2f}" in printed
    assert f"paper BLEU: {test[0].paper_bleu:.2f}" in printed
    assert "Update 34/34 | Epoch 2/2" in printed


def test_a_stopped_run_averages_nothing_and_tests_its_best_and_its_last_weights(tmp_path):
    """Issue 23: a stop at epoch 4 averaged epoch 2's checkpoint (BLEU 0.43) with epoch 4's and
    reported the test BLEU of that average. An average is a finished run's final stretch; a
    stopped run reports its best-validated checkpoint and its last weights, each named."""
    from engine.events import TestBleu

    control = RunControl()

    def stop_in_epoch_3(event):
        if isinstance(event, BatchProgress) and event.epoch == 3:
            control.stop()

    config = tiny_config(training__epochs=6, training__keep_last=3, training__average_last=3)
    status, events = train_run(tmp_path, config, control, on_event=stop_in_epoch_3)
    assert status == "stopped"
    assert {p.name for p in tmp_path.glob("model_epoch_*.pt")} == {"model_epoch_1.pt",
                                                                   "model_epoch_2.pt"}
    assert not (tmp_path / ckpt.AVERAGED).exists()  # two periodic checkpoints: not averaged
    test = of(events, TestBleu)
    assert [t.role for t in test] == ["best", "last"]
    assert test[0].checkpoint.endswith(ckpt.BEST) and test[1].checkpoint.endswith(ckpt.LAST)
    assert all(t.averaged_from == [] for t in test)
    assert any("no averaged.pt" in n.text for n in of(events, Notice))
    info = {f.stage: f.info for f in of(events, StageFinished)}.get("train")
    assert info is None or info["test_bleu"] == test[1].sacrebleu
    assert isinstance(events[-1], RunFinished) and events[-1].status == "stopped"


def test_effective_tokens_sets_update_freq_says_so_and_the_run_dir_records_it(tmp_path):
    from engine.config import load_config

    config = tiny_config(training__epochs=1, training__effective_tokens=1200)
    status, events = train_run(tmp_path, config)
    assert status == "finished"
    notice = [n.text for n in of(events, Notice) if "effective_tokens" in n.text]
    assert notice == ["training.effective_tokens = 1,200: update_freq = 3 (1 process x 3 "
                      "batches x 500 max_tokens = 1,500 tokens per update)"]
    assert load_config(str(tmp_path / "config.toml")).training.update_freq == 3
    batches = {f.stage: f.info for f in of(events, StageFinished)}["batches"]["batches_per_epoch"]
    assert of(events, EpochSummary)[0].step == math.ceil(batches / 3)


def test_sample_translations_show_the_same_validation_sentences_at_each_validation(tmp_path):
    import io

    from engine.events import SampleTranslations
    from engine.printer import HeadlessPrinter

    out = io.StringIO()
    config = tiny_config(training__epochs=2, eval__print_samples=2)
    status, events = train_run(tmp_path, config, on_event=HeadlessPrinter(out))
    assert status == "finished"
    samples = of(events, SampleTranslations)
    assert [s.epoch for s in samples] == [1, 2]  # one per validation
    # the first validation pairs, the same each time
    first_sources = [s["source"] for s in samples[0].samples]
    assert len(first_sources) == 2 and first_sources == [s["source"] for s in samples[1].samples]
    for sample in samples[0].samples:
        assert sample["reference"] and isinstance(sample["hypothesis"], str)
    # each validation: its summary, then its samples
    assert events.index(samples[0]) == events.index(of(events, EpochSummary)[0]) + 1
    printed = out.getvalue()
    assert f"Sample 1 | src: {first_sources[0]}" in printed
    assert f"| ref: {samples[1].samples[1]['reference']}" in printed

    status, events = train_run(tmp_path / "none", tiny_config(training__epochs=1,
                                                                 eval__print_samples=0))
    assert status == "finished" and not of(events, SampleTranslations)


def test_patience_ends_training_when_validation_stops_improving(tmp_path):
    # a learning rate of zero: the weights never change, so neither does the validation loss
    config = tiny_config(training__epochs=8, training__lr_factor=0.0, training__patience=2)
    status, events = train_run(tmp_path, config)
    assert status == "finished"
    summaries = of(events, EpochSummary)
    assert [s.epoch for s in summaries] == [1, 2, 3]  # best at 1, no better at 2 and 3: stop
    assert len({s.val_loss for s in summaries}) == 1
    notice = [n.text for n in of(events, Notice) if n.text.startswith("early stop")]
    assert len(notice) == 1 and "2 validations without a lower validation loss" in notice[0]
    info = {f.stage: f.info for f in of(events, StageFinished)}["train"]
    assert (info["epochs"], info["ended"]) == (3, "patience")
    assert events[-1] == RunFinished(status="finished", seconds=events[-1].seconds,
                                     cpu_seconds=events[-1].cpu_seconds)
    assert events[-1].cpu_seconds > 0  # the run process's CPU time, recorded
    assert torch.load(tmp_path / ckpt.LAST, weights_only=True)["since_best"] == 2

    # patience counts from the last improvement, across a resume
    status, events = train_run(tmp_path, tiny_config(training__epochs=8, training__patience=0),
                               resume="last")
    assert status == "finished" and [s.epoch for s in of(events, EpochSummary)][0] == 4


# --- the epoch's train loss is the epoch's --------------------------------------------------


def update_tokens(run_dir, config, epoch: int) -> list[int]:
    """Target tokens of each update of ``epoch`` (update_freq 1), from the run's encoded arrays
    and the batches the seed makes: counted apart from the run's loss sums."""
    import numpy as np

    from engine.batching import Batches, make_batches

    src = np.diff(np.load(run_dir / "data" / "train.src_offsets.npy"))
    decoder = np.diff(np.load(run_dir / "data" / "train.tgt_offsets.npy")) - 1
    training = config.training
    batches = make_batches(src, decoder, training.max_tokens, training.seed)
    order = Batches(train=batches, valid=[], seed=training.seed).epoch_order(epoch)
    return [int(decoder[batches[i]].sum()) for i in order]


def epoch_mean(progress, tokens: list[int], epoch: int) -> float:
    """The token-weighted mean of the per-update losses BatchProgress reported in ``epoch``."""
    losses = {p.batch: p.loss for p in progress if p.epoch == epoch}
    assert sorted(losses) == list(range(1, len(tokens) + 1))  # every update reported, once
    return sum(losses[b] * tokens[b - 1] for b in losses) / sum(tokens)


def test_each_epochs_train_loss_is_the_mean_of_that_epochs_updates_also_across_a_stop(
        tmp_path, every_batch):
    config = tiny_config(training__epochs=3)
    status, events = train_run(tmp_path / "straight", config)
    assert status == "finished"
    progress, summaries = of(events, BatchProgress), of(events, EpochSummary)
    for summary in summaries:  # epoch 1, and 2 and 3: not averaged from the start of the run
        tokens = update_tokens(tmp_path / "straight", config, summary.epoch)
        mean = epoch_mean(progress, tokens, summary.epoch)
        assert summary.train_loss == pytest.approx(mean, rel=1e-6)
        last = [p for p in progress if p.epoch == summary.epoch][-1]
        assert last.avg_loss == summary.train_loss  # the panel's "avg" says the same
    assert summaries[2].train_loss < summaries[1].train_loss < summaries[0].train_loss

    # stopped in the middle of epoch 2, then resumed: epoch 2's figure still covers all of
    # its batches, those before the stop and those after
    control = RunControl()

    def stop_mid_epoch_2(event):
        if isinstance(event, BatchProgress) and (event.epoch, event.batch) == (2, 7):
            control.stop()

    status, first = train_run(tmp_path / "broken", config, control, on_event=stop_mid_epoch_2)
    assert status == "stopped"
    status, second = train_run(tmp_path / "broken", config, resume="last")
    assert status == "finished"
    assert of(second, BatchProgress)[0].batch == 8  # resumed inside epoch 2
    resumed = of(first + second, BatchProgress)
    for summary in of(second, EpochSummary):
        tokens = update_tokens(tmp_path / "broken", config, summary.epoch)
        assert summary.train_loss == pytest.approx(epoch_mean(resumed, tokens, summary.epoch),
                                                   rel=1e-6)
    assert [s.epoch for s in of(second, EpochSummary)] == [2, 3]
