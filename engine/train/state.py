"""What training advances: the schedule, the state a checkpoint holds, the clocks and the epoch's
loss sums.

    lr = lr_factor * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)      (section 5.3)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from engine import distributed
from engine.checkpoint import Progress


def noam_lr(step: int, d_model: int, warmup: int, factor: float) -> float:
    """The paper's schedule (section 5.3); ``step`` counts updates from 1."""
    step = max(step, 1)
    return factor * d_model ** -0.5 * min(step ** -0.5, step * warmup ** -1.5)


class NoamSchedule:
    """Sets the optimizer's learning rate for the next update; its state is the update count."""

    def __init__(self, optimizer: torch.optim.Optimizer, d_model: int, warmup: int,
                 factor: float) -> None:
        self.optimizer, self.d_model, self.warmup, self.factor = optimizer, d_model, warmup, factor
        self.updates = 0
        self._apply()

    @property
    def lr(self) -> float:
        """The rate the next update uses."""
        return noam_lr(self.updates + 1, self.d_model, self.warmup, self.factor)

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr

    def step(self) -> None:
        self.updates += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        self._apply()


@dataclass
class TrainingState:
    """What the model stage builds and the train stage advances; what a checkpoint holds (with
    the config and tokenizers): model, optimizer, schedule, scaler, and the run's counters."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: NoamSchedule
    scaler: Any  # torch.amp.GradScaler for fp16, else None
    device: torch.device
    precision: str
    amp_dtype: torch.dtype | None
    progress: Progress = field(default_factory=Progress)
    resumed_from: str = ""

    @property
    def step(self) -> int:
        return self.schedule.updates


@dataclass
class ActiveClock:
    """Seconds excluding pauses (RunControl keeps the paused total)."""

    control: Any
    started: float = field(default_factory=time.monotonic)
    paused_at_start: float = 0.0

    def __post_init__(self) -> None:
        self.paused_at_start = self.control.paused_so_far()

    def seconds(self) -> float:
        paused = self.control.paused_so_far() - self.paused_at_start
        return max(time.monotonic() - self.started - paused, 0.0)


class EpochLoss:
    """The epoch's NLL sum and target tokens for the whole job (what ``train_loss`` and
    ``avg_loss`` divide): the sums a checkpoint saved of this epoch before this process started
    or resumed it (``base_*``), plus what this process has added since (``local_*``, summed
    over the ranks when read). They hold one epoch only: zero at its first batch, and zero
    again once it is complete, so that the checkpoint written at its end carries nothing into
    the next one."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.base_nll, self.base_tokens = 0.0, 0
        self.local_nll, self.local_tokens = 0.0, 0

    def start(self) -> None:
        """Before the epoch's first batch here: from zero, or resumed inside the epoch from the
        checkpoint's sums. (A checkpoint written at an epoch's end by an earlier version holds
        that finished epoch's sums with batch_in_epoch 0: they are not this epoch's.)"""
        p = self.progress
        if p.batch_in_epoch == 0:
            p.epoch_nll, p.epoch_tokens = 0.0, 0
        self.base_nll, self.base_tokens = p.epoch_nll, p.epoch_tokens
        self.local_nll, self.local_tokens = 0.0, 0

    def add(self, nll: float, tokens: int) -> None:
        """One update's NLL sum and target tokens, this process's."""
        self.local_nll += nll
        self.local_tokens += tokens

    def end(self) -> None:
        """The epoch is complete (its train_loss taken): the next starts from zero."""
        self.base_nll, self.base_tokens = 0.0, 0
        self.local_nll, self.local_tokens = 0.0, 0
        self.progress.epoch_nll, self.progress.epoch_tokens = 0.0, 0

    def sums(self, last_nll: float = 0.0, last_tokens: int = 0) -> tuple[float, int, float, int]:
        """(the epoch's NLL sum, its target tokens, ``last_nll``, ``last_tokens``), each summed
        over the ranks; sets the progress counters a checkpoint saves. Every rank calls it
        together."""
        p = self.progress
        nll, tokens, last_nll, last_tokens = distributed.reduce_sums(
            [self.local_nll, float(self.local_tokens), float(last_nll), float(last_tokens)])
        p.epoch_nll, p.epoch_tokens = self.base_nll + nll, self.base_tokens + int(tokens)
        return p.epoch_nll, p.epoch_tokens, last_nll, int(last_tokens)
