"""The train stage: epochs of updates, a validation after each, until the run is done.

    for each epoch (from where the checkpoint left off):
        for each group of training.update_freq batches (in the epoch's seeded order):
            forward, backward, accumulate; agree across ranks; one update      (step.py)
            report progress; checkpoint_last.pt every save_every_minutes       (checkpoints.py)
        validate: loss, BLEU, samples (validation.py); keep best/periodic checkpoints;
        stop on divergence (guard.py) or after training.patience validations without progress
    average the final checkpoints, test BLEU                            (checkpoints, validation)

Training runs ``training.epochs`` epochs, or ``training.max_updates`` updates (epochs follow one
another until then), or ends earlier on patience. A stop is honoured at an update boundary.
The next batch is collated (and pinned, on CUDA) in a background thread while the device works.
"""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import checkpoint as ckpt
from engine import distributed
from engine.batching import Batches, collate
from engine.control import RunControl, RunStopped
from engine.errors import DataError
from engine.events import BatchProgress, Emit, EpochSummary, Notice, cpu_seconds
from engine.prefetch import Prefetcher, pinned
from engine.stages import StageResult
from engine.train.checkpoints import RunCheckpoints
from engine.train.guard import DivergenceGuard
from engine.train.memory_watch import MemoryWatch
from engine.train.state import ActiveClock, EpochLoss, TrainingState
from engine.train.step import UpdateGroup, UpdateStep
from engine.train.validation import Validation, ppl

if TYPE_CHECKING:
    from engine.config import RunConfig
    from engine.data.corpus import Corpus
    from engine.encode import EncodedData
    from engine.tokenizer.stage import TokenizerSet

PROGRESS_SECONDS = 0.25  # at most ~4 BatchProgress events a second (plus each epoch's last)


class TrainLoop:
    def __init__(self, config: RunConfig, state: TrainingState, corpus: Corpus,
                 tokenizers: TokenizerSet, data: EncodedData, batches: Batches, run_dir: Path,
                 emit: Emit, control: RunControl) -> None:
        self.config, self.training = config, config.training
        self.state, self.progress = state, state.progress
        self.data, self.batches, self.run_dir = data, batches, Path(run_dir)
        self.emit, self.control = emit, control
        self.session = ActiveClock(control)
        self.seconds_before = self.progress.seconds
        self.epoch_loss = EpochLoss(self.progress)
        self.step = UpdateStep(state, config.training)
        self.memory = MemoryWatch(config, self.step, self.run_dir, emit)
        self.guard = DivergenceGuard(config, state, self.run_dir, emit)
        self.checkpoints = RunCheckpoints(config, state, tokenizers, self.run_dir, emit,
                                          self.epoch_loss, self.session, self.total_seconds,
                                          self.guard)
        self.validation = Validation(config, self.step, corpus, tokenizers, data, batches,
                                     control, emit)
        self.corpus, self.tokenizers = corpus, tokenizers
        self.ended = ""  # why training ended early: "patience"
        self.unreported: tuple | None = None  # report()'s arguments for the last update, if due
        self.compile_said = False  # the compile's Notice was emitted

    def total_seconds(self) -> float:
        return self.seconds_before + self.session.seconds()

    def updates_done(self) -> bool:
        return bool(self.training.max_updates) and self.state.step >= self.training.max_updates

    def epochs_planned(self) -> int:
        """training.epochs; when training by updates, the epochs max_updates amounts to."""
        if not self.training.max_updates:
            return self.training.epochs
        batches = len(self.batches.train) // distributed.world_size()  # each rank's
        per_epoch = max(math.ceil(batches / self.training.update_freq), 1)
        return max(math.ceil(self.training.max_updates / per_epoch), self.progress.epoch + 1)

    def stop(self) -> None:
        if self.guard.last_update_good():  # never the weights of a NaN or diverged update
            self.checkpoints.save_last()
        else:
            self.emit(Notice(level="warning", text=(
                f"not saved: the last update's loss was NaN/inf or diverged; "
                f"{self.guard.kept()}")))
        raise RunStopped()

    # -- the run --

    def run(self) -> dict[str, Any]:
        training, p = self.training, self.progress
        if len(self.data.valid) == 0:
            raise DataError("no validation pairs are left after encoding (all longer than "
                            f"model.max_len = {self.config.model.max_len}?)")
        self.checkpoints.say_where_it_left_off(len(self.batches.train), self.updates_done())
        first_epoch = p.epoch + 1
        # by updates: epochs until max_updates; by epochs: training.epochs
        epochs = (itertools.count(first_epoch) if training.max_updates
                  else range(first_epoch, training.epochs + 1))
        ended = "max_updates" if training.max_updates else "epochs"
        if not self.updates_done() and (training.max_updates or first_epoch <= training.epochs):
            # a run that would run out of memory fails now, not hours in
            self.memory.preflight(self.data, self.batches, self.corpus, self.tokenizers,
                                  self.run_dir)
        try:
            for epoch in epochs:
                if self.updates_done():
                    break
                epoch_clock = ActiveClock(self.control)
                complete = self.train_epoch(epoch)
                self.finish_epoch(epoch, epoch_clock, complete)
                if self.ended:
                    ended = self.ended
                    break
        except RunStopped:
            self.end_of_training(stopped=True)  # a stopped run is tested too: what it has learned
            raise
        self.memory.maybe_sample(force=True)
        p.seconds = self.total_seconds()
        info = {"epochs": p.epoch, "steps": self.state.step, "ended": ended,
                "train_loss": p.train_loss, "val_loss": p.val_loss, "val_ppl": ppl(p.val_loss),
                "bleu": p.bleu, "best": p.best, "seconds": round(p.seconds, 1)}
        compiled = self.step.compiled
        if compiled is not None and compiled.seconds is not None:  # for the app's train stage
            info.update(compile_seconds=round(compiled.seconds, 1),
                        compiled_graphs=compiled.graphs())
        info.update(self.end_of_training())
        return info

    def say_compile_time(self) -> None:
        """training.compile: the first update compiled the step; never silent (minutes on a big
        model)."""
        compiled = self.step.compiled
        if compiled is None or compiled.seconds is None or self.compile_said:
            return
        self.compile_said = True
        graphs = compiled.graphs()
        self.emit(Notice(text=f"compiled the training step in {compiled.seconds:.1f} s "
                              f"({graphs} graph{'s' if graphs != 1 else ''})"))

    def make_batch(self, order, position: int):
        """Runs in the prefetch thread: the batch at ``position`` of the epoch, pinned on CUDA."""
        batch = collate(self.data.train, self.batches.train[order[position]],
                        self.step.length_multiple)
        return pinned(batch) if self.state.device.type == "cuda" else batch

    def train_epoch(self, epoch: int) -> bool:
        """Train the rest of ``epoch``; False when max_updates ended it before its last batch."""
        s, training, p = self.state, self.training, self.progress
        order = distributed.shard(self.batches.epoch_order(epoch))  # this rank's batches
        n = len(order)
        s.model.train()
        self.memory.start_epoch()
        self.epoch_loss.start()
        clock = ActiveClock(self.control)
        done_here, last_progress = 0, 0.0
        self.unreported = None
        group = UpdateGroup()
        pending = None  # a timed save's snapshot, written once its update group vouches for it
        positions = range(p.batch_in_epoch, n)
        with Prefetcher(lambda position: self.make_batch(order, position), positions) as batches:
            for position, batch in zip(positions, batches):
                # blocks while paused; in a torchrun job every rank pauses, resumes and stops
                # here together (host numbers over the gloo control group: no wait for the GPU)
                # before a pause or stop takes effect, the last update is reported: the screen
                # then shows the step the run is at (it showed 12 where the run had reached 14)
                boundary = position % training.update_freq == 0
                if boundary and distributed.agree_control(self.control,
                                                          on_pause=self.report_unreported):
                    self.report_unreported()
                    self.stop()
                # mid-epoch checkpoint_last.pt, so that a kill loses at most save_every_minutes
                if boundary and self.checkpoints.save_due():
                    pending = self.checkpoints.snapshot()
                self.memory.before_batch()
                if self.step.add_batch(group, batch):
                    self.memory.note_peak(batch)
                del batch
                p.batch_in_epoch = position + 1
                done_here += 1
                if not ((position + 1) % training.update_freq == 0 or position == n - 1):
                    continue

                # progress is due on rank 0's clock, and always for the epoch's last update and
                # the one that reaches max_updates; the ranks agree on it with the OOM flags
                now = time.monotonic()
                last_update = bool(training.max_updates) and s.step + 1 >= training.max_updates
                report_due = position == n - 1 or last_update or (
                    distributed.is_main() and now - last_progress >= PROGRESS_SECONDS)
                oom, report = self.step.agree(group, report_due)
                if pending is not None:
                    self.checkpoints.timed_save(group, pending)
                    pending = None
                nll = math.nan
                if oom:
                    self.step.recover_from_oom()  # every rank drops this update
                    self.memory.oom_skipped += 1
                    self.guard.bad_batch("oom", epoch, position + 1, group.padded_tokens)
                else:
                    applied, nll = self.step.finish(group)
                    if not applied and (s.scaler is None or not math.isfinite(nll)):
                        self.guard.bad_batch("nan", epoch, position + 1, group.padded_tokens)
                    else:  # an fp16 overflow is the scaler's normal business
                        self.guard.good_update(nll / max(group.tokens, 1))
                if math.isfinite(nll):
                    group.loss = nll
                    self.epoch_loss.add(nll, group.tokens)
                self.say_compile_time()
                self.unreported = (epoch, position, n, group, clock, done_here)
                if report:
                    last_progress = now
                    self.report_unreported()
                group = UpdateGroup()
                self.memory.maybe_sample()
                if (self.checkpoints.update_checkpoint_due(self.updates_done())
                        and self.guard.last_update_good()):  # not after a NaN/diverged update
                    self.checkpoints.save_update_checkpoint()  # the last update's too
                if self.updates_done():
                    self.epoch_loss.sums()
                    return position == n - 1
        self.epoch_loss.sums()
        return True

    def report_unreported(self) -> None:
        """Report the last update unless it was (every rank calls it together)."""
        if self.unreported is not None:
            self.report(*self.unreported)
            self.unreported = None

    def report(self, epoch: int, position: int, n: int, group: UpdateGroup,
               clock: ActiveClock, done_here: int) -> None:
        """A BatchProgress for the whole job (every rank calls it, rank 0's is written)."""
        s, training, world = self.state, self.training, distributed.world_size()
        last_nll, last_tokens = (group.loss, group.tokens) if group.loss is not None else (0.0, 0)
        epoch_nll, epoch_tokens, last_nll, last_tokens = self.epoch_loss.sums(last_nll,
                                                                               last_tokens)
        if not last_tokens:
            return  # the update was skipped: no loss to show
        seconds = max(clock.seconds(), 1e-9)
        rate = done_here / seconds
        left_in_epoch = n - position - 1  # this rank's batches
        if training.max_updates:  # the last epoch may end early, at max_updates
            left = max(training.max_updates - s.step, 0) * training.update_freq
            left_in_epoch = min(left_in_epoch, left)
        else:
            left = left_in_epoch + (training.epochs - epoch) * n
        gnorm = self.step.gnorm
        self.emit(BatchProgress(
            epoch=epoch, epochs=self.epochs_planned(), batch=(position + 1) * world,
            batches=n * world, step=s.step,
            loss=last_nll / last_tokens, avg_loss=epoch_nll / max(epoch_tokens, 1),
            lr=s.schedule.lr, batches_per_second=round(rate * world, 3),
            tokens_per_second=round((epoch_tokens - self.epoch_loss.base_tokens) / seconds, 1),
            eta=round(left_in_epoch / rate, 1) if rate > 0 else 0.0,
            run_eta=round(left / rate, 1) if rate > 0 else None,
            elapsed=round(seconds, 3),
            gnorm=gnorm if gnorm is not None and math.isfinite(gnorm) else None,
            # reading the scale waits for the device: only here, at reporting time
            loss_scale=s.scaler.get_scale() if s.scaler is not None else None,
            max_updates=training.max_updates))

    def finish_epoch(self, epoch: int, epoch_clock: ActiveClock, complete: bool = True) -> None:
        """Validate, report, keep the best and the periodic checkpoints. ``complete=False``: the
        last validation of a run that max_updates ends inside ``epoch``."""
        ev, training, p = self.config.eval, self.training, self.progress
        val_loss = self.validation.loss()
        if val_loss is None:
            self.stop()  # every batch is done, validation is not: resume validates
        self.guard.check_validation(epoch, val_loss)
        p.train_loss = p.epoch_nll / max(p.epoch_tokens, 1)
        p.val_loss = val_loss
        bleu_now = bool(ev.bleu_every and epoch % ev.bleu_every == 0)
        p.bleu = None
        if bleu_now or ev.print_samples:
            p.bleu = distributed.from_main(lambda: self.validation.decode_valid(epoch, bleu_now))
        if complete:  # the next epoch starts from its first batch and from zero sums
            p.epoch, p.batch_in_epoch = epoch, 0
            self.epoch_loss.end()

        p.best_val_loss = min(val_loss, p.best_val_loss or val_loss)
        by_bleu = ev.best_by == "bleu"
        measured = p.bleu is not None if by_bleu else True
        improved = measured and (p.best is None or (p.bleu > p.best if by_bleu
                                                    else val_loss < p.best))
        if improved:
            p.best, p.since_best = (p.bleu if by_bleu else val_loss), 0
        elif measured:
            p.since_best += 1
        self.emit(EpochSummary(
            epoch=epoch, epochs=self.epochs_planned(), step=self.state.step,
            train_loss=p.train_loss, train_ppl=ppl(p.train_loss), val_loss=val_loss,
            val_ppl=ppl(val_loss), bleu=p.bleu, epoch_seconds=round(epoch_clock.seconds(), 3),
            total_seconds=round(self.total_seconds(), 3), cpu_seconds=cpu_seconds()))
        self.validation.emit_samples()
        if training.patience and p.since_best >= training.patience and complete:
            self.ended = "patience"
            what = "higher validation BLEU" if by_bleu else "lower validation loss"
            self.emit(Notice(text=(
                f"early stop: {p.since_best} validations without a {what} (best {p.best:.4f}, "
                f"training.patience = {training.patience}); training ends here")))
        periodic = (complete and not training.checkpoint_every_updates
                    and epoch % training.checkpoint_every == 0)
        self.checkpoints.after_validation(epoch, periodic, improved)

    def end_of_training(self, stopped: bool = False) -> dict[str, Any]:
        """Rank 0 averages and tests (the other ranks wait); nothing when nothing was trained.

        A finished run tests averaged.pt, the mean of its final stretch of checkpoints (the
        paper's last N), else its last weights. A stopped run is no finished one: an average
        would mix its early checkpoints with its late ones (a stop at epoch 4 averaged epoch 2's,
        BLEU 0.43, with epoch 4's), so it tests the checkpoint that validated best and its last
        weights, each named as such."""
        if self.state.step == 0:
            return {}
        scores: dict[str, Any] = {}

        def work() -> None:
            if not stopped:
                averaged_from = self.checkpoints.average_at_end()
                role = "averaged" if averaged_from else "last"
                scores.update(self.validation.test_bleu(self.run_dir, role, averaged_from))
                return
            self.emit(Notice(text="stopped before the end: no averaged.pt (an average takes a "
                                  "finished run's final checkpoints); testing the checkpoint "
                                  "that validated best and the last weights"))
            best = self.run_dir / ckpt.BEST
            if best.is_file():
                scores.update(self.validation.test_bleu(self.run_dir, "best"))
            scores.update(self.validation.test_bleu(self.run_dir, "last"))

        distributed.from_main(work)
        return scores


def run_train_stage(config: RunConfig, state: TrainingState, corpus: Corpus,
                    tokenizers: TokenizerSet, data: EncodedData, batches: Batches, run_dir: Path,
                    emit: Emit, control: RunControl) -> StageResult[TrainingState]:
    """Train epochs ``progress.epoch + 1 .. training.epochs``; the output is the trained state."""
    loop = TrainLoop(config, state, corpus, tokenizers, data, batches, run_dir, emit, control)
    return StageResult(output=state, info=loop.run())
