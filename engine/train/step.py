"""The update step: forward, backward and accumulation of a group of batches, agreement across
ranks on out-of-memory errors, gradient averaging, the norm (and clipping), the optimizer step.

One optimizer update = ``training.update_freq`` batches. Per batch: forward under autocast,
label-smoothed cross entropy over the real target tokens, backward. Per update: gradient norm
(and clipping), Adam (0.9, 0.98, 1e-9), then the schedule's next rate.

The host never waits for the device within an update: token counts come from the host's batch,
losses stay on the device, and each update reads back exactly two numbers in one transfer, its
gradient norm and its NLL sum. The norm decides whether the update is applied (NaN/inf gradients
are skipped). Under torchrun the ranks first agree (host numbers over the gloo control group)
whether any of them ran out of memory: then every rank drops the update, else gradients are
averaged once and every rank steps (fairseq's legacy-DDP trade).

The run's loop, ``benchmarks/gpu_check.py`` and ``benchmarks/bench_train.py`` all drive this
one object.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from engine import distributed, replicas
from engine.device import attention_context
from engine.errors import EngineError
from engine.loss import label_smoothed_loss
from engine.memory import reset_peak
from engine.train.compiling import LENGTH_MULTIPLE, CompiledStep, compile_wanted

if TYPE_CHECKING:
    from engine.batching import Batch
    from engine.config import TrainingConfig
    from engine.train.state import TrainingState


@dataclass
class UpdateGroup:
    """The batches of one optimizer update, as they go through this process."""

    batches: int = 0
    tokens: int = 0  # target tokens, from the host's batches
    padded_tokens: int = 0
    nll: Any = None  # NLL sum on the device (read with the update's norm), None before a batch
    out_of_memory: bool = False
    loss: float | None = None  # the NLL sum read back, when finite and the update not lost


class UpdateStep:
    """Forward/backward into an UpdateGroup, then one update of ``state``'s weights."""

    def __init__(self, state: TrainingState, training: TrainingConfig) -> None:
        self.state, self.training = state, training
        self.gnorm: float | None = None  # the last update's gradient norm (before clipping)
        # training.compile: the forward and loss compiled (state.model itself stays plain)
        self.compiled = (CompiledStep(state.model)
                         if compile_wanted(training.compile, state.device) else None)

    @property
    def length_multiple(self) -> int:
        """Batch widths are rounded up to this (bounded shapes for the compiler)."""
        return LENGTH_MULTIPLE if self.compiled is not None else 1

    def autocast(self):
        s = self.state
        return torch.autocast(s.device.type, dtype=s.amp_dtype, enabled=s.amp_dtype is not None)

    def kernels(self):
        """The attention kernels training.attention allows, for every forward and backward."""
        return attention_context(self.training.attention)

    def to_device(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        device = self.state.device
        # from pinned memory (CUDA) the copy is queued, and the host goes on
        asynchronous = device.type == "cuda"
        return tuple(x.to(device, non_blocking=asynchronous) for x in tensors)

    def forward_backward(self, batch: Batch) -> torch.Tensor:
        """Adds this batch's gradients; returns its NLL sum, on the device (not read)."""
        s, training = self.state, self.training
        # keep/target were made (and pinned, on CUDA) with the batch in the prefetch thread
        src, tgt_in, keep, target = self.to_device(batch.src, batch.tgt_in, batch.keep,
                                                   batch.target)
        with self.kernels():
            if self.compiled is not None:
                loss, nll = self.compiled(src, tgt_in, keep, target, training.label_smoothing,
                                          s.amp_dtype)
            else:
                with self.autocast():
                    logits = s.model(src, tgt_in, keep)
                loss, nll = label_smoothed_loss(logits, target, training.label_smoothing)
                del logits  # the loss keeps its gradient, not the logits
            # normalised by the host's token count: nothing is read back from the device
            loss = loss / batch.tokens / training.update_freq
            (s.scaler.scale(loss) if s.scaler is not None else loss).backward()
        return nll.detach()

    def add_batch(self, group: UpdateGroup, batch: Batch) -> bool:
        """Count ``batch`` into ``group`` and add its gradients; False when it did not run (an
        out-of-memory error in it or earlier in the group: the update is lost anyway)."""
        group.batches += 1
        group.tokens += batch.tokens
        group.padded_tokens += batch.padded_tokens
        if group.out_of_memory:
            return False
        out_of_memory = False
        try:
            nll = self.forward_backward(batch)
            group.nll = nll if group.nll is None else group.nll + nll
        except torch.cuda.OutOfMemoryError:
            out_of_memory = True
        if out_of_memory:  # outside the except block, which still holds the tensors
            group.out_of_memory = True
            self.recover_from_oom()
        return not out_of_memory

    def agree(self, group: UpdateGroup, report_due: bool = False) -> tuple[bool, bool]:
        """(did any rank run out of memory in this group, is progress due on any rank): one
        collective of host numbers, before the gradients travel, so every rank then takes the
        same decisions."""
        oom, report = (flag > 0 for flag in distributed.reduce_sums(
            [float(group.out_of_memory), float(report_due)]))
        return oom, report

    def finish(self, group: UpdateGroup) -> tuple[bool, float]:
        """Average the gradients over the ranks and apply them: (applied, the group's NLL sum,
        NaN when not finite). Only once every rank agreed that its batches went through."""
        replicas.average_gradients(list(self.state.model.parameters()))
        return self.update(group)

    def update(self, group: UpdateGroup) -> tuple[bool, float]:
        """Apply the accumulated gradients: (applied, the group's NLL sum, NaN when not finite).

        The norm and the NLL come back in one transfer, the update's only wait for the device.
        Not applied when the norm is not finite: NaN/inf gradients, or an fp16 overflow (which
        the GradScaler handles: it skips the step on the device and lowers the scale).
        """
        s = self.state
        params = [p for p in s.model.parameters() if p.grad is not None]
        if s.scaler is not None:
            s.scaler.unscale_(s.optimizer)
        # the total norm in one foreach pass; with clipping off (inf) the gradients stay as they are
        norm = torch.nn.utils.clip_grad_norm_(params, self.training.clip_norm or math.inf)
        distributed.wait_for_device(s.device)
        norm_value, nll_value = torch.stack([norm.float(), group.nll.float()]).tolist()
        self.gnorm = norm_value
        applied = math.isfinite(norm_value)
        try:
            if s.scaler is not None:
                s.scaler.step(s.optimizer)  # skips the step itself when gradients overflowed
                s.scaler.update()
            elif applied:
                s.optimizer.step()
        except torch.cuda.OutOfMemoryError:
            # Adam's first step allocates its state; a step half done cannot be skipped
            raise EngineError(
                f"CUDA out of memory in the optimizer update (step {s.step + 1}): the model, "
                "its gradients and Adam's state do not fit beside the batch; lower "
                f"training.max_tokens (now {self.training.max_tokens}) or use a smaller model"
            ) from None
        s.optimizer.zero_grad(set_to_none=True)
        if applied:
            s.schedule.step()
        return applied, nll_value

    def recover_from_oom(self) -> None:
        """After a CUDA out-of-memory error, outside its except block (whose traceback still
        holds the batch's tensors): drop the update's gradients and the cached blocks."""
        self.state.optimizer.zero_grad(set_to_none=True)
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()
        if self.state.device.type == "cuda":
            reset_peak(self.state.device, sync=False)  # the panel's peak starts again from here
