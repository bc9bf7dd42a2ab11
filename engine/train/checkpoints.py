"""The run's checkpoints: when checkpoint_last.pt is written (every training.save_every_minutes,
at every epoch's end and every stop), what it holds, the epoch and update checkpoints kept
beside it, checkpoint_best.pt, and averaged.pt at the end.

Stops and resumes are exact: the checkpoint records how many batches of the epoch are done and
every random generator's state (each rank's too), and batch order depends only on the seed and
the epoch, so a resumed run continues with the very batch, dropout mask and weights that an
uninterrupted run would have used next. Rank 0 writes; the others wait at a barrier with the
long timeout (a slow disk is fine).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from engine import checkpoint as ckpt
from engine import distributed, replicas
from engine.events import CheckpointSaved, Emit, Notice

if TYPE_CHECKING:
    from engine.config import RunConfig
    from engine.tokenizer.stage import TokenizerSet
    from engine.train.guard import DivergenceGuard
    from engine.train.state import ActiveClock, EpochLoss, TrainingState
    from engine.train.step import UpdateGroup


class RunCheckpoints:
    def __init__(self, config: RunConfig, state: TrainingState, tokenizers: TokenizerSet,
                 run_dir: Path, emit: Emit, epoch_loss: EpochLoss, session: ActiveClock,
                 total_seconds: Callable[[], float], guard: DivergenceGuard) -> None:
        self.config, self.training = config, config.training
        self.state, self.progress = state, state.progress
        self.tokenizers, self.run_dir, self.emit = tokenizers, Path(run_dir), emit
        self.epoch_loss, self.session, self.total_seconds = epoch_loss, session, total_seconds
        self.guard = guard  # whether weights look good enough to save
        self.saved_position: tuple[int, int] | None = None  # (epoch, batch) of checkpoint_last
        if state.resumed_from and Path(state.resumed_from) == self.run_dir / ckpt.LAST:
            self.saved_position = (self.progress.epoch, self.progress.batch_in_epoch)
        self.last_save = 0.0  # session seconds (pauses excluded) at the last checkpoint_last.pt
        self.update_saved = -1  # the step of the newest checkpoint_update_N.pt

    def say_where_it_left_off(self, batches_per_epoch: int, updates_done: bool) -> None:
        """Before training: warn when the checkpoint's run cut its epochs into other batches
        (the epoch continues at the same batch number of the new ones), say when it has
        nothing left to train; then record this run's batches per epoch."""
        p, training, step = self.progress, self.training, self.state.step
        if p.batches_per_epoch and p.batches_per_epoch != batches_per_epoch and p.batch_in_epoch:
            self.emit(Notice(level="warning", text=(
                f"the checkpoint's run had {p.batches_per_epoch} batches per epoch, this one "
                f"has {batches_per_epoch} (max_tokens changed?): epoch {p.epoch + 1} continues "
                f"at batch {p.batch_in_epoch + 1} of the new batches")))
        p.batches_per_epoch = batches_per_epoch
        if training.max_updates and updates_done:
            self.emit(Notice(text=f"the checkpoint has already made {step:,} updates of "
                                  f"{training.max_updates:,}; raise training.max_updates to "
                                  "train more"))
        elif not training.max_updates and p.epoch >= training.epochs:
            self.emit(Notice(text=f"the checkpoint has already trained {p.epoch} epochs of "
                                  f"{training.epochs}; raise training.epochs to train more"))

    def save_due(self) -> bool:
        """Time for a mid-epoch checkpoint_last.pt (training.save_every_minutes)?"""
        minutes = self.training.save_every_minutes
        due = minutes > 0 and self.session.seconds() - self.last_save >= minutes * 60
        return distributed.any_rank(due)  # every rank takes part in the save (RNG states)

    def timed_save(self, group: UpdateGroup, snapshot: dict[str, Any]) -> None:
        """The mid-epoch checkpoint_last.pt (training.save_every_minutes) of the weights the
        update group just computed its loss with: written after the group's forward passes,
        before its update, so that the loss vouches for them (a save at the boundary itself
        would write weights nobody has seen a loss of). ``snapshot``: the counters and random
        generators as they were at the boundary, which a resumed run continues from. Reading
        the loss waits for the device, once per save. Every rank calls it together."""
        loss = None
        if not group.out_of_memory and group.nll is not None:
            loss = float(group.nll) / max(group.tokens, 1)
        if not distributed.any_rank(not self.guard.loss_looks_good(loss)):
            self.write_last(snapshot)
        # else: not written; still due, tried again at the next boundary

    def snapshot(self) -> dict[str, Any]:
        """What a checkpoint_last.pt written now holds besides weights and optimizer (every
        rank calls it together: the loss sums and random generators are the whole job's)."""
        self.epoch_loss.sums()
        p = self.progress
        p.seconds = self.total_seconds()
        return {"progress": dataclasses.replace(p), "rng": ckpt.rng_state(),
                "rank_rng": replicas.gather_rng_states()}  # each rank's dropout generator

    def save_last(self) -> None:
        """checkpoint_last.pt now, at an update boundary (an epoch's end, a stop)."""
        self.write_last(self.snapshot())

    def write_last(self, snapshot: dict[str, Any]) -> None:
        p = snapshot["progress"]
        position = (p.epoch, p.batch_in_epoch)
        if self.saved_position == position:
            return
        if distributed.is_main():  # rank 0 writes the checkpoint
            state = ckpt.checkpoint_state(self.state, self.config, self.tokenizers,
                                          distributed.world_size(), progress=p,
                                          rng=snapshot["rng"])
            if snapshot["rank_rng"] is not None:
                state["rank_rng"] = snapshot["rank_rng"]
            path = self.run_dir / ckpt.LAST
            self.announce(path, ckpt.save_checkpoint(state, path))
        self.saved_position = position
        self.last_save = self.session.seconds()
        # the others wait here, not in a collective with the short timeout: a slow disk is fine
        distributed.barrier()

    def announce(self, path: Path, size: int) -> None:
        p = self.progress
        self.emit(CheckpointSaved(path=str(path), name=path.name, epoch=p.epoch,
                                  step=self.state.step, val_loss=p.val_loss, bleu=p.bleu,
                                  size_bytes=size, saved_at=time.time()))

    def after_validation(self, epoch: int, periodic: bool, improved: bool) -> None:
        """checkpoint_last.pt with this validation's results, then (rank 0) its copies: the
        epoch's model_epoch_N.pt when ``periodic`` (older ones pruned to training.keep_last)
        and checkpoint_best.pt when ``improved``."""
        p = self.progress
        if periodic:  # recorded before saving, so a resume from this checkpoint knows it too
            p.periodic = [*p.periodic, ckpt.periodic_name(epoch)]
        self.saved_position = None  # same batch position, new validation results: write
        self.save_last()
        if distributed.is_main():  # rank 0 writes the checkpoints
            last = self.run_dir / ckpt.LAST
            if periodic:
                path = self.run_dir / ckpt.periodic_name(epoch)
                self.announce(path, ckpt.copy_checkpoint(last, path))
                ckpt.prune_periodic(self.run_dir, self.training.keep_last, p.periodic)
            if improved:
                path = self.run_dir / ckpt.BEST
                self.announce(path, ckpt.copy_checkpoint(last, path))
        distributed.barrier()  # the others wait for those writes with the long timeout

    def update_checkpoint_due(self, updates_done: bool) -> bool:
        """checkpoint_update_N.pt every training.checkpoint_every_updates, and the last one."""
        every, step = self.training.checkpoint_every_updates, self.state.step
        return bool(every) and step != self.update_saved and (step % every == 0 or updates_done)

    def save_update_checkpoint(self) -> None:
        """checkpoint_update_N.pt (N = updates so far): what the end of training averages."""
        p = self.progress
        name = ckpt.update_name(self.state.step)
        p.periodic = [*p.periodic, name]  # before saving: a resume from it knows it too
        self.save_last()
        self.update_saved = self.state.step
        if distributed.is_main():
            path = self.run_dir / name
            self.announce(path, ckpt.copy_checkpoint(self.run_dir / ckpt.LAST, path))
            ckpt.prune_periodic(self.run_dir, self.training.keep_last, p.periodic,
                                by_updates=True)
        distributed.barrier()  # the others wait for those writes with the long timeout

    def average_at_end(self) -> list[Path]:
        """averaged.pt from the newest training.average_last periodic checkpoints (update ones
        when the run writes those); the checkpoints averaged, [] when fewer than two exist."""
        count = self.training.average_last
        by_updates = bool(self.training.checkpoint_every_updates)
        ours = set(self.progress.periodic)  # never another run's files left in the directory
        paths = [path for path in ckpt.periodic_checkpoints(self.run_dir, by_updates)
                 if path.name in ours][-count:] if count else []
        if len(paths) < 2:
            return []
        if len(paths) < count:
            self.emit(Notice(level="warning", text=(
                f"training.average_last = {count} but {len(paths)} periodic checkpoints are "
                f"kept (training.keep_last = {self.training.keep_last}): averaging "
                f"{len(paths)}")))
        path = self.run_dir / ckpt.AVERAGED
        size = ckpt.save_checkpoint(ckpt.average_checkpoints(paths), path)
        self.announce(path, size)
        self.emit(Notice(text=f"averaged.pt: the mean of the last {len(paths)} checkpoints "
                              f"({', '.join(p.name for p in paths)})"))
        return paths
