"""The divergence guard: a run whose updates keep failing (NaN/inf gradients, CUDA out of
memory) or whose validation loss blows up stops with one line saying which checkpoints hold the
last good state; diverged weights never replace them, also across a resume.

Its yardstick is the run's history, which the checkpoint carries across resumes: the best
validation loss, or before any validation the training loss the checkpoint's epoch had reached
(a run stopped in epoch 1 and resumed with a rate a million times too high must not make its
first validation, 5.4 million, the best). NaN/inf updates count over the last ``NAN_WINDOW``
updates, in a row or not; out-of-memory errors count in a row (a rare long batch is normal).
"""

from __future__ import annotations

import math
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

from engine import checkpoint as ckpt
from engine import distributed
from engine.errors import EngineError
from engine.events import BatchSkipped, Emit

if TYPE_CHECKING:
    from engine.config import RunConfig
    from engine.train.state import TrainingState

NAN_WINDOW = 100  # updates over which NaN/inf ones count toward training.max_bad_batches


class DivergenceGuard:
    def __init__(self, config: RunConfig, state: TrainingState, run_dir: Path,
                 emit: Emit) -> None:
        self.config, self.training, self.state = config, config.training, state
        self.run_dir, self.emit = Path(run_dir), emit
        self.bad_in_a_row = 0
        self.recent_nan: deque[bool] = deque(maxlen=NAN_WINDOW)  # one entry per update
        self.last_loss_good = True  # the last update's loss was finite and within the yardstick
        p = state.progress
        # the training loss before this process started: the yardstick until a validation
        self.loss_before: float | None = (
            p.epoch_nll / p.epoch_tokens if p.epoch_tokens and p.batch_in_epoch
            else p.train_loss)

    def yardstick(self) -> float | None:
        """The loss a diverged one is measured against: the best validation loss so far, or
        before any validation the training loss the resumed checkpoint had reached."""
        p = self.state.progress
        if p.best_val_loss is not None:
            return p.best_val_loss
        if p.best is not None and self.config.eval.best_by == "loss":
            return p.best  # a checkpoint from before best_val_loss was recorded
        return self.loss_before if self.loss_before and math.isfinite(self.loss_before) else None

    def loss_looks_good(self, loss: float | None) -> bool:
        """Did weights that gave this loss (per target token) not diverge? A NaN/inf loss, or
        one past training.divergence_factor times the yardstick, says they did."""
        best = self.yardstick()
        return loss is not None and math.isfinite(loss) and (
            best is None or loss <= self.training.divergence_factor * best)

    def last_update_good(self) -> bool:
        """May the weights now be saved? Not after a NaN/inf or diverged update (every rank
        calls it together and they agree)."""
        return not distributed.any_rank(self.bad_in_a_row > 0 or not self.last_loss_good)

    def good_update(self, loss: float | None = None) -> None:
        """An applied update; ``loss``: its NLL per target token on this rank."""
        self.bad_in_a_row = 0
        self.recent_nan.append(False)
        self.last_loss_good = loss is None or self.loss_looks_good(loss)

    def kept(self, last_counters: bool = False) -> str:
        """Which checkpoints hold the good state, for the line that ends the run."""
        last, best = self.run_dir / ckpt.LAST, self.run_dir / ckpt.BEST
        if last.is_file():
            kept = ckpt.load_checkpoint(last, mmap=True)  # only its counters are read
            where = f"epoch {kept['epoch']}, batch {kept['batch_in_epoch']}, step {kept['step']}"
            text = (f"{last} ({where}) holds the last good state" if last_counters
                    else f"{last} holds the last good state ({where})")
        elif self.state.resumed_from:
            text = f"{self.state.resumed_from} (this run resumed from it) holds the last good state"
        else:
            return "no checkpoint was saved yet"
        if best.is_file():
            value = ckpt.load_checkpoint(best, mmap=True).get("best")
            text += f", {best} holds the best" + (f" ({value:.4f})" if value is not None else "")
        return text

    def bad_batch(self, reason: str, epoch: int, batch: int, tokens: int) -> None:
        """One skipped update (every rank skips the same one); the run ends after
        training.max_bad_batches of them in a row, or NaN/inf ones among the last NAN_WINDOW
        updates."""
        self.bad_in_a_row += 1
        self.last_loss_good = False
        if reason == "nan":
            self.recent_nan.append(True)
        self.emit(BatchSkipped(reason=reason, epoch=epoch, batch=batch, tokens=tokens,
                               in_a_row=self.bad_in_a_row))
        most = self.training.max_bad_batches
        nan_count = sum(self.recent_nan)
        if self.bad_in_a_row < most and (reason != "nan" or nan_count < most):
            return
        if reason == "oom":
            raise EngineError(
                f"training stopped: CUDA out of memory in {self.bad_in_a_row} batches in a "
                f"row (epoch {epoch}, batch {batch}, {tokens:,} padded tokens); {self.kept()}; "
                f"lower training.max_tokens (now {self.training.max_tokens}) and raise "
                "training.update_freq to keep the batch size")
        how_many = (f"{self.bad_in_a_row} batches in a row" if self.bad_in_a_row >= most
                    else f"{nan_count} of the last {len(self.recent_nan)} updates")
        raise EngineError(
            f"training stopped: loss or gradients were NaN/inf in {how_many} (epoch {epoch}, "
            f"batch {batch}); {self.kept()}; try a lower training.lr_factor, "
            "training.clip_norm = 1.0 or training.precision = \"fp32\"")

    def check_validation(self, epoch: int, val_loss: float) -> None:
        """Stop, saving nothing, when the weights have diverged: a non-finite validation loss, or
        one above training.divergence_factor times the yardstick. The checkpoints on disk are
        then the last good state, and the message says which ones hold it."""
        best = self.yardstick()
        if self.loss_looks_good(val_loss):
            return
        factor = self.training.divergence_factor
        good = self.kept(last_counters=True)
        if (self.run_dir / ckpt.LAST).is_file():
            good += "; resume from it with a lower training.lr_factor or training.clip_norm = 1.0"
        what = ("the best" if self.state.progress.best_val_loss is not None or best is None
                else "the training loss before the resume")
        worse = "is not finite" if not math.isfinite(val_loss) else (
            f"is more than training.divergence_factor = {factor:g} times {what} {best:.4f}")
        raise EngineError(f"training stopped: diverged, validation loss {val_loss:.4g} after "
                          f"epoch {epoch} {worse}; no checkpoint was replaced; {good}")
