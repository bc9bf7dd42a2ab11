"""The divergence guard: a run whose updates keep failing (NaN/inf gradients, CUDA out of
memory) or whose validation loss blows up stops with one line saying which checkpoint holds the
last good state; diverged weights never replace it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from engine import checkpoint as ckpt
from engine.errors import EngineError
from engine.events import BatchSkipped, Emit

if TYPE_CHECKING:
    from engine.config import RunConfig
    from engine.train.state import TrainingState


class DivergenceGuard:
    def __init__(self, config: RunConfig, state: TrainingState, run_dir: Path,
                 emit: Emit) -> None:
        self.config, self.training, self.state = config, config.training, state
        self.run_dir, self.emit = Path(run_dir), emit
        self.bad_in_a_row = 0

    def good_update(self) -> None:
        self.bad_in_a_row = 0

    def bad_batch(self, reason: str, epoch: int, batch: int, tokens: int) -> None:
        """One skipped update (every rank skips the same one); the run ends after
        training.max_bad_batches in a row."""
        self.bad_in_a_row += 1
        self.emit(BatchSkipped(reason=reason, epoch=epoch, batch=batch, tokens=tokens,
                               in_a_row=self.bad_in_a_row))
        if self.bad_in_a_row < self.training.max_bad_batches:
            return
        last = self.run_dir / ckpt.LAST
        kept = f"{last} holds the last good state" if last.is_file() else "no checkpoint yet"
        if reason == "oom":
            raise EngineError(
                f"training stopped: CUDA out of memory in {self.bad_in_a_row} batches in a "
                f"row (epoch {epoch}, batch {batch}, {tokens:,} padded tokens); {kept}; "
                f"lower training.max_tokens (now {self.training.max_tokens}) and raise "
                "training.update_freq to keep the batch size")
        raise EngineError(
            f"training stopped: loss or gradients were NaN/inf in {self.bad_in_a_row} "
            f"batches in a row (epoch {epoch}, batch {batch}); {kept}; try a lower "
            "training.lr_factor, training.clip_norm = 1.0 or training.precision = \"fp32\"")

    def check_validation(self, epoch: int, val_loss: float) -> None:
        """Stop, saving nothing, when the weights have diverged: a non-finite validation loss, or
        one above training.divergence_factor times the best so far. The checkpoints on disk are
        then the last good state, and the message says which one holds it."""
        p = self.state.progress
        best = p.best_val_loss
        if best is None and self.config.eval.best_by == "loss":
            best = p.best  # a checkpoint from before best_val_loss was recorded
        factor = self.training.divergence_factor
        if math.isfinite(val_loss) and (best is None or val_loss <= factor * best):
            return
        last = self.run_dir / ckpt.LAST
        if last.is_file():
            kept = ckpt.load_checkpoint(last, mmap=True)  # only its counters are read
            good = (f"{last} (epoch {kept['epoch']}, batch {kept['batch_in_epoch']}, step "
                    f"{kept['step']}) holds the last good state; resume from it with a lower "
                    "training.lr_factor or training.clip_norm = 1.0")
        elif self.state.resumed_from:
            good = (f"{self.state.resumed_from} (this run resumed from it) holds the last "
                    "good state")
        else:
            good = "no checkpoint was saved yet"
        worse = "is not finite" if not math.isfinite(val_loss) else (
            f"is more than training.divergence_factor = {factor:g} times the best {best:.4f}")
        raise EngineError(f"training stopped: diverged, validation loss {val_loss:.4g} after "
                          f"epoch {epoch} {worse}; no checkpoint was replaced; {good}")
