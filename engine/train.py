"""Model and train stages: build (or restore) the Transformer, then train it.

One optimizer update = ``training.update_freq`` batches. Per batch: forward under autocast,
label-smoothed cross entropy over the real target tokens, backward. Per update: gradient norm
(and clipping), Adam (0.9, 0.98, 1e-9), the paper's learning-rate schedule

    lr = lr_factor * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)

Every loss the run reports (batch, epoch, validation) is the cross entropy per target token
without label smoothing, so perplexity = exp(loss) and train and validation compare.

The host never waits for the device within an update: the next batch is collated (and pinned,
on CUDA) in a background thread and copied with ``non_blocking=True``; token counts come from
the host's batch; losses stay on the device. Each update reads back exactly two numbers in
one transfer, its gradient norm and its NLL sum: the norm decides whether the update is applied
(NaN/inf gradients are skipped), and the NLL joins this process's sums on the host. In a
torchrun job those sums are added up over the ranks only when progress is reported or saved.

Stops and resumes are exact: a stop is honoured at an update boundary, the checkpoint records how
many batches of the epoch are done and every random generator's state, and batch order depends
only on the seed and the epoch, so a resumed run continues with the very batch, dropout mask and
weights that an uninterrupted run would have used next.

Training runs ``training.epochs`` epochs, or ``training.max_updates`` updates (epochs follow one
another until then), or ends earlier when validation has not improved for ``training.patience``
validations. Then, finished or stopped, the last ``training.average_last`` periodic checkpoints
(model_epoch_N.pt, or checkpoint_update_N.pt with ``checkpoint_every_updates``) are averaged into
averaged.pt, and the test split is decoded with it and scored two ways (``TestBleu``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from engine import checkpoint as ckpt
from engine import distributed
from engine import fit as memory_fit
from engine.batching import Batches, collate
from engine.checkpoint import Progress
from engine.control import RunControl, RunStopped
from engine.device import attention_context, enable_tf32, pick_device, resolve_precision
from engine.encode import EncodedData
from engine.errors import ConfigError, DataError, EngineError
from engine.events import (
    BatchProgress,
    BatchSkipped,
    CheckpointSaved,
    Emit,
    EpochSummary,
    MemorySample,
    Notice,
    SampleTranslations,
    TestBleu,
)
from engine.loss import label_smoothed_loss
from engine.memory import MemoryProbe, reset_peak, trim_heap
from engine.prefetch import Prefetcher, pinned
from engine.stages import StageResult

if TYPE_CHECKING:
    from engine.config import RunConfig
    from engine.data.corpus import Corpus
    from engine.tokenizer.stage import TokenizerSet

PROGRESS_SECONDS = 0.25  # at most ~4 BatchProgress events a second (plus each epoch's last)
MEMORY_SECONDS = 5.0  # one MemorySample every few seconds


# --- pieces --------------------------------------------------------------------------------


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


# --- model stage ---------------------------------------------------------------------------


@dataclass
class Trainer:
    """What the model stage builds and the train stage advances; what a checkpoint holds."""

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


def run_model_stage(config: RunConfig, tokenizers: TokenizerSet, run_dir: Path, emit: Emit,
                    resume: str | None = None) -> StageResult[Trainer]:
    """Build the Transformer, its optimizer and schedule; with ``resume``, restore a checkpoint."""
    from engine.model import Transformer

    if config.eval.best_by == "bleu" and config.eval.bleu_every == 0:
        raise ConfigError(f"{config.source}: [eval] best_by = \"bleu\" needs bleu_every >= 1")
    device = pick_device(config.training.device)
    precision, amp_dtype = resolve_precision(config.training.precision, device)
    tf32 = enable_tf32(device, precision)
    src_vocab, tgt_vocab = tokenizers.src.get_vocab_size(), tokenizers.tgt.get_vocab_size()

    # same seed, same initial weights, same dropout masks
    seed = config.training.seed
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    model = Transformer.from_config(config.model, src_vocab, tgt_vocab,
                                    share_embeddings=bool(tokenizers.shared)).to(device)
    # fused: one kernel over all parameters (about 4x faster than the default step on the CPU)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.0, betas=(0.9, 0.98), eps=1e-9,
                                 fused=True)
    schedule = NoamSchedule(optimizer, config.model.d_model, config.training.warmup,
                            config.training.lr_factor)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    trainer = Trainer(model, optimizer, schedule, scaler, device, precision, amp_dtype)
    ckpt.remove_stale_temporaries(run_dir)

    if resume:
        path, state = ckpt.load_for_resume(resume, run_dir, config.model, tokenizers)
        ckpt.restore_training(trainer, state, path)
        progress = trainer.progress
        progress.batch_in_epoch, notice = distributed.adapt_resume(
            state, progress.epoch, progress.batch_in_epoch, path, config.training.update_freq,
            config.training.max_tokens)
        if notice is not None:
            emit(notice)
        trainer.resumed_from = str(path)
    # one id for all the checkpoints of this run, resumes included (average checks it)
    trainer.progress.run_id = trainer.progress.run_id or uuid.uuid4().hex

    distributed.broadcast_parameters(model)  # every rank starts from rank 0's weights
    parameters = sum(p.numel() for p in model.parameters())  # tied weights counted once
    info = {"parameters": parameters, "device": device.type, "precision": precision,
            "attention": config.training.attention}
    if tf32:
        info["tf32"] = True
    if distributed.active():
        info["processes"], info["backend"] = distributed.world_size(), distributed.backend()
    if trainer.resumed_from:
        info.update(resumed_from=trainer.resumed_from, epoch=trainer.progress.epoch,
                    batch_in_epoch=trainer.progress.batch_in_epoch, step=trainer.step)
    return StageResult(output=trainer, info=info)


# --- train stage ---------------------------------------------------------------------------


@dataclass
class _Clock:
    """Seconds excluding pauses (RunControl keeps the paused total)."""

    control: Any
    started: float = field(default_factory=time.monotonic)
    paused_at_start: float = 0.0

    def __post_init__(self) -> None:
        self.paused_at_start = self.control.paused_so_far()

    def seconds(self) -> float:
        paused = self.control.paused_so_far() - self.paused_at_start
        return max(time.monotonic() - self.started - paused, 0.0)


@dataclass
class _Group:
    """The batches of one optimizer update, as they go through this process."""

    batches: int = 0
    tokens: int = 0  # target tokens, from the host's batches
    padded_tokens: int = 0
    nll: Any = None  # NLL sum on the device (read with the update's norm), None before a batch
    out_of_memory: bool = False
    loss: float | None = None  # the NLL sum read back, when finite and the update not lost


class TrainLoop:
    def __init__(self, config: RunConfig, trainer: Trainer, corpus: Corpus,
                 tokenizers: TokenizerSet, data: EncodedData, batches: Batches, run_dir: Path,
                 emit: Emit, control: RunControl) -> None:
        self.config, self.cfg = config, config.training
        self.trainer, self.progress = trainer, trainer.progress
        self.corpus, self.tokenizers, self.data, self.batches = corpus, tokenizers, data, batches
        self.run_dir = Path(run_dir)
        self.emit, self.control = emit, control
        self.memory = MemoryProbe()  # also read by the app's panel: one probe for both
        self.last_memory = 0.0
        # what a person tuning max_tokens against out-of-memory errors needs (MemorySample)
        self.budget = memory_fit.memory_budget(config, trainer.device)
        fitted = memory_fit.matching_fit(config, self.run_dir, trainer.device)
        self.fit_max_tokens = fitted.max_tokens if fitted is not None else None
        self.recent_peak: int | None = None
        self.largest_peak: int | None = None
        self.largest_batch: list[int] = []
        self.oom_skipped = 0
        self.bad_in_a_row = 0
        self.saved_position: tuple[int, int] | None = None  # (epoch, batch) of checkpoint_last
        if trainer.resumed_from and Path(trainer.resumed_from) == self.run_dir / ckpt.LAST:
            self.saved_position = (self.progress.epoch, self.progress.batch_in_epoch)
        self.last_save = 0.0  # session seconds (pauses excluded) at the last checkpoint_last.pt
        self.update_saved = -1  # the step of the newest checkpoint_update_N.pt
        self.ended = ""  # why training ended early: "patience"
        self.samples: SampleTranslations | None = None  # rank 0: this validation's samples
        self.session = _Clock(control)
        self.seconds_before = self.progress.seconds
        self.gnorm: float | None = None  # the last update's gradient norm (before clipping)
        # this process's NLL and target tokens of the epoch since it started or resumed; the
        # epoch's totals are the checkpoint's (base) plus these summed over the ranks
        self.local_nll, self.local_tokens = 0.0, 0
        self.base_nll, self.base_tokens = 0.0, 0

    # -- helpers --

    def autocast(self):
        t = self.trainer
        return torch.autocast(t.device.type, dtype=t.amp_dtype, enabled=t.amp_dtype is not None)

    def kernels(self):
        """The attention kernels training.attention allows, for every forward and backward."""
        return attention_context(self.cfg.attention)

    def to_device(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        device = self.trainer.device
        # from pinned memory (CUDA) the copy is queued, and the host goes on
        asynchronous = device.type == "cuda"
        return tuple(x.to(device, non_blocking=asynchronous) for x in tensors)

    def total_seconds(self) -> float:
        return self.seconds_before + self.session.seconds()

    def maybe_memory(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last_memory >= MEMORY_SECONDS:
            self.last_memory = now
            reading = self.memory.sample()
            self.emit(MemorySample(
                devices=reading.devices, torch_allocated=reading.torch_allocated,
                torch_reserved=reading.torch_reserved, torch_peak=reading.torch_peak,
                process_rss=reading.process_rss or 0, system_used=reading.system_used or 0,
                system_total=reading.system_total or 0, max_tokens=self.cfg.max_tokens,
                budget=self.budget, recent_peak=self.recent_peak,
                largest_batch_peak=self.largest_peak, largest_batch=self.largest_batch,
                headroom=None if self.largest_peak is None else self.budget - self.largest_peak,
                oom_skipped=self.oom_skipped, fit_max_tokens=self.fit_max_tokens))
            self.recent_peak = None

    def note_peak(self, batch) -> None:
        """This batch's peak memory (from ``reset_peak`` before it): the sparkline's point and
        the run's largest so far, with the batch's shape. On the CPU with a memory budget, the
        heap's free memory goes back to the kernel after every batch: resident memory otherwise
        creeps up with the changing batch shapes (measured: 1.3 -> 2.0 GiB in one epoch of
        sample data at max_tokens 6,208, glibc's defaults or ours alike, most of it oneDNN's
        kernel cache, since capped in engine/__init__.py), past what the fit measured for a
        step. The price is page faults (kernel time), paid only under a budget."""
        device = self.trainer.device
        if device.type == "cuda":
            peak = memory_fit.peak_since_reset(device, sync=False)
        else:  # resident memory after the batch: its peak is not measured per batch on the CPU
            peak = memory_fit.current_usage(device)
            if self.cfg.memory_budget:
                trim_heap()
        self.recent_peak = max(self.recent_peak or 0, peak)
        if self.largest_peak is None or peak > self.largest_peak:
            self.largest_peak = peak
            self.largest_batch = [batch.src.size(0), batch.src.size(1), batch.tgt_in.size(1)]

    def epoch_sums(self, last: _Group | None = None) -> tuple[float, int, float, int]:
        """(the epoch's NLL sum, its target tokens, ``last``'s NLL sum, its tokens), each for the
        whole job; sets the progress counters a checkpoint saves. Every rank calls it together."""
        p = self.progress
        last_nll = last.loss if last is not None and last.loss is not None else 0.0
        last_tokens = last.tokens if last is not None and last.loss is not None else 0
        nll, tokens, last_nll, last_tokens = distributed.reduce_sums(
            [self.local_nll, float(self.local_tokens), float(last_nll), float(last_tokens)])
        p.epoch_nll, p.epoch_tokens = self.base_nll + nll, self.base_tokens + int(tokens)
        return p.epoch_nll, p.epoch_tokens, last_nll, int(last_tokens)

    def save_due(self) -> bool:
        """Time for a mid-epoch checkpoint_last.pt (training.save_every_minutes)?"""
        minutes = self.cfg.save_every_minutes
        due = minutes > 0 and self.session.seconds() - self.last_save >= minutes * 60
        return distributed.any_rank(due)  # every rank takes part in the save (RNG states)

    def loss_looks_good(self, loss: float | None) -> bool:
        """Did weights that gave this training loss not diverge? A NaN/inf loss, or one past
        training.divergence_factor times the best validation loss, says they did."""
        best = self.progress.best_val_loss
        return loss is not None and math.isfinite(loss) and (
            best is None or loss <= self.cfg.divergence_factor * best)

    def timed_save(self, group: _Group, snapshot: dict[str, Any]) -> None:
        """The mid-epoch checkpoint_last.pt (training.save_every_minutes) of the weights the
        update group just computed its loss with: written after the group's forward passes,
        before its update, so that the loss vouches for them (a save at the boundary itself
        would write weights nobody has seen a loss of). ``snapshot``: the counters and random
        generators as they were at the boundary, which a resumed run continues from. Reading
        the loss waits for the device, once per save. Every rank calls it together."""
        loss = None
        if not group.out_of_memory and group.nll is not None:
            loss = float(group.nll) / max(group.tokens, 1)
        if not distributed.any_rank(not self.loss_looks_good(loss)):
            self.write_last(snapshot)
        # else: not written; still due, tried again at the next boundary

    def snapshot(self) -> dict[str, Any]:
        """What a checkpoint_last.pt written now holds besides weights and optimizer (every
        rank calls it together: the loss counters and random generators are the whole job's)."""
        self.epoch_sums()
        p = self.progress
        p.seconds = self.total_seconds()
        return {"progress": dataclasses.replace(p), "rng": ckpt.rng_state(),
                "rank_rng": distributed.gather_rng_states()}  # each rank's dropout generator

    def save_last(self) -> None:
        """checkpoint_last.pt now, at an update boundary (an epoch's end, a stop)."""
        self.write_last(self.snapshot())

    def write_last(self, snapshot: dict[str, Any]) -> None:
        t = self.trainer
        p = snapshot["progress"]
        position = (p.epoch, p.batch_in_epoch)
        if self.saved_position == position:
            return
        if distributed.is_main():  # rank 0 writes the checkpoint
            state = ckpt.training_state(t, self.config, self.tokenizers,
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
        t = self.trainer
        p = self.progress
        self.emit(CheckpointSaved(path=str(path), name=path.name, epoch=p.epoch, step=t.step,
                                  val_loss=p.val_loss, bleu=p.bleu, size_bytes=size,
                                  saved_at=time.time()))

    def stop(self) -> None:
        if self.bad_in_a_row == 0:  # never the weights of a NaN streak
            self.save_last()
        raise RunStopped()

    def bad_batch(self, reason: str, epoch: int, batch: int, tokens: int) -> None:
        """One skipped update (every rank skips the same one); the run ends after
        training.max_bad_batches in a row."""
        if reason == "oom":
            self.oom_skipped += 1
        self.bad_in_a_row += 1
        self.emit(BatchSkipped(reason=reason, epoch=epoch, batch=batch, tokens=tokens,
                               in_a_row=self.bad_in_a_row))
        if self.bad_in_a_row >= self.cfg.max_bad_batches:
            last = self.run_dir / ckpt.LAST
            kept = f"{last} holds the last good state" if last.is_file() else "no checkpoint yet"
            if reason == "oom":
                raise EngineError(
                    f"training stopped: CUDA out of memory in {self.bad_in_a_row} batches in a "
                    f"row (epoch {epoch}, batch {batch}, {tokens:,} padded tokens); {kept}; "
                    f"lower training.max_tokens (now {self.cfg.max_tokens}) and raise "
                    "training.update_freq to keep the batch size")
            raise EngineError(
                f"training stopped: loss or gradients were NaN/inf in {self.bad_in_a_row} "
                f"batches in a row (epoch {epoch}, batch {batch}); {kept}; try a lower "
                "training.lr_factor, training.clip_norm = 1.0 or training.precision = \"fp32\"")

    def out_of_memory(self) -> None:
        """After a CUDA out-of-memory error, outside its except block (whose traceback still
        holds the batch's tensors): drop the update's gradients and the cached blocks."""
        self.trainer.optimizer.zero_grad(set_to_none=True)
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()
        reset_peak()  # the panel's peak starts again from what is left

    # -- one batch, one update --

    def forward_backward(self, batch) -> torch.Tensor:
        """Adds this batch's gradients; returns its NLL sum, on the device (not read)."""
        t = self.trainer
        # keep/target were made (and pinned, on CUDA) with the batch in the prefetch thread
        src, tgt_in, keep, target = self.to_device(batch.src, batch.tgt_in, batch.keep,
                                                   batch.target)
        with self.kernels():
            with self.autocast():
                logits = t.model(src, tgt_in, keep)
            loss, nll = label_smoothed_loss(logits, target, self.cfg.label_smoothing)
            del logits  # the loss keeps its gradient, not the logits
            # normalised by the host's token count: nothing is read back from the device
            loss = loss / batch.tokens / self.cfg.update_freq
            (t.scaler.scale(loss) if t.scaler is not None else loss).backward()
        return nll.detach()

    def update(self, group: _Group) -> tuple[bool, float]:
        """Apply the accumulated gradients: (applied, the group's NLL sum, NaN when not finite).

        The norm and the NLL come back in one transfer, the update's only wait for the device.
        Not applied when the norm is not finite: NaN/inf gradients, or an fp16 overflow (which
        the GradScaler handles: it skips the step on the device and lowers the scale).
        """
        t = self.trainer
        params = [p for p in t.model.parameters() if p.grad is not None]
        if t.scaler is not None:
            t.scaler.unscale_(t.optimizer)
        # the total norm in one foreach pass; with clipping off (inf) the gradients stay as they are
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.clip_norm or math.inf)
        distributed.wait_for_device(t.device)
        norm_value, nll_value = torch.stack([norm.float(), group.nll.float()]).tolist()
        self.gnorm = norm_value
        applied = math.isfinite(norm_value)
        try:
            if t.scaler is not None:
                t.scaler.step(t.optimizer)  # skips the step itself when gradients overflowed
                t.scaler.update()
            elif applied:
                t.optimizer.step()
        except torch.cuda.OutOfMemoryError:
            # Adam's first step allocates its state; a step half done cannot be skipped
            raise EngineError(
                f"CUDA out of memory in the optimizer update (step {t.step + 1}): the model, "
                "its gradients and Adam's state do not fit beside the batch; lower "
                f"training.max_tokens (now {self.cfg.max_tokens}) or use a smaller model"
            ) from None
        t.optimizer.zero_grad(set_to_none=True)
        if applied:
            t.schedule.step()
        return applied, nll_value

    # -- the worst case first --

    def preflight_worst_case(self) -> None:
        """One step on the epoch's most memory-hungry batch and one beam search on the longest
        validation sentences before training, so that a run that would run out of memory fails
        in its first minute, naming the max_tokens that fits. On the CPU only against
        training.memory_budget (the whole RAM is no useful limit: the system swaps or kills)."""
        from engine.batching import decoder_lengths

        t, cfg = self.trainer, self.cfg
        if t.device.type == "cpu" and not cfg.memory_budget:
            return
        budget = memory_fit.memory_budget(self.config, t.device)
        budget_source = ("training.memory_budget" if cfg.memory_budget
                         else f"{torch.cuda.get_device_name(t.device)}'s memory")
        train = self.data.train
        index = memory_fit.hungriest_batch(self.batches.train, train.src_lengths,
                                           decoder_lengths(train), self.config.model,
                                           self.tokenizers.tgt.get_vocab_size())
        rows = self.batches.train[index]
        batch = collate(train, rows)
        what = (f"the epoch's largest batch ({len(rows)} sentences of up to "
                f"{batch.src.size(1)}/{batch.tgt_in.size(1)} tokens)")
        # Adam's moments appear at the first update: counted, not allocated, before it
        adam = 0 if t.optimizer.state else 2 * sum(p.numel() * 4 for p in t.model.parameters())
        cuda_rng = [t.device] if t.device.type == "cuda" else []
        held = memory_fit.current_usage(t.device)
        with torch.random.fork_rng(devices=cuda_rng):  # dropout here leaves the run's draws
            memory_fit.reset_peak(t.device)
            try:
                self.forward_backward(batch)  # this rank alone: gradients travel in update()
                peak = memory_fit.peak_since_reset(t.device) + adam
            except torch.cuda.OutOfMemoryError:
                peak = None
            finally:
                t.optimizer.zero_grad(set_to_none=True)
        if peak is None or peak > budget:
            if peak is None:
                torch.cuda.empty_cache()
            fits = memory_fit.max_tokens_that_fits(cfg.max_tokens, peak, held, adam, budget,
                                                   self.config.model.max_len)
            fitted = memory_fit.matching_fit(self.config, self.run_dir, t.device)
            raise EngineError(memory_fit.preflight_failure(
                what, peak, budget, budget_source, cfg.max_tokens,
                memory_fit.max_tokens_remedy(fits, fitted)))
        text = (f"preflight: {what} peaked at {peak / 2**30:.2f} GiB of the "
                f"{budget / 2**30:.2f} GiB budget")
        beam_peak = self.preflight_beam_search() if distributed.is_main() else None
        if beam_peak is not None:
            if beam_peak > budget:
                raise EngineError(memory_fit.preflight_failure(
                "validation beam search on the longest validation sentences", beam_peak,
                budget, budget_source, cfg.max_tokens,
                "lower eval.beam or eval.bleu_samples, or set eval.bleu_every = 0"))
            text += f"; validation beam search {beam_peak / 2**30:.2f} GiB"
        self.emit(Notice(text=text))

    def preflight_beam_search(self) -> int | None:
        """Peak memory of validation beam search on the longest sentences BLEU decodes (one
        batch of translate's), or None when BLEU is off."""
        from engine.decode import translate

        t, ev = self.trainer, self.config.eval
        if not ev.bleu_every:
            return None
        sources = [src for src, _ in (self.corpus.valid[:ev.bleu_samples] if ev.bleu_samples
                                      else self.corpus.valid)]
        encoded = self.tokenizers.src.encode_batch(sources, add_special_tokens=False)
        longest = sorted(range(len(sources)), key=lambda i: len(encoded[i].ids))
        longest = longest[-memory_fit.BEAM_SENTENCES:]
        memory_fit.reset_peak(t.device)
        with torch.no_grad(), self.autocast():
            translate(t.model, self.tokenizers.src, self.tokenizers.tgt,
                      [sources[i] for i in longest], beam=ev.beam,
                      length_penalty=ev.length_penalty, max_len_offset=ev.max_len_offset,
                      batch_size=memory_fit.BEAM_SENTENCES, max_tokens=self.cfg.max_tokens)
        t.model.train()
        return memory_fit.peak_since_reset(t.device)

    # -- epochs --

    def updates_done(self) -> bool:
        return bool(self.cfg.max_updates) and self.trainer.step >= self.cfg.max_updates

    def epochs_planned(self) -> int:
        """training.epochs; when training by updates, the epochs max_updates amounts to."""
        if not self.cfg.max_updates:
            return self.cfg.epochs
        batches = len(self.batches.train) // distributed.world_size()  # each rank's
        per_epoch = max(math.ceil(batches / self.cfg.update_freq), 1)
        return max(math.ceil(self.cfg.max_updates / per_epoch), self.progress.epoch + 1)

    def save_update_checkpoint(self) -> None:
        """checkpoint_update_N.pt (N = updates so far): what the end of training averages."""
        p = self.progress
        name = ckpt.update_name(self.trainer.step)
        p.periodic = [*p.periodic, name]  # before saving: a resume from it knows it too
        self.save_last()
        self.update_saved = self.trainer.step
        if distributed.is_main():
            path = self.run_dir / name
            self.announce(path, ckpt.copy_checkpoint(self.run_dir / ckpt.LAST, path))
            ckpt.prune_periodic(self.run_dir, self.cfg.keep_last, p.periodic, by_updates=True)
        distributed.barrier()  # the others wait for those writes with the long timeout

    def make_batch(self, order, position: int):
        """Runs in the prefetch thread: the batch at ``position`` of the epoch, pinned on CUDA."""
        batch = collate(self.data.train, self.batches.train[order[position]])
        return pinned(batch) if self.trainer.device.type == "cuda" else batch

    def train_epoch(self, epoch: int) -> bool:
        """Train the rest of ``epoch``; False when max_updates ended it before its last batch."""
        t, cfg, control = self.trainer, self.cfg, self.control
        p = self.progress
        order = distributed.shard(self.batches.epoch_order(epoch))  # this rank's batches
        n = len(order)
        world = distributed.world_size()  # progress counts the whole job's batches
        t.model.train()
        reset_peak()  # each epoch's peak on its own
        clock = _Clock(control)
        done_here = 0
        self.base_nll, self.base_tokens = p.epoch_nll, p.epoch_tokens
        self.local_nll, self.local_tokens = 0.0, 0
        last_progress = 0.0
        group = _Group()
        pending = None  # a timed save's snapshot, written once its update group vouches for it
        positions = range(p.batch_in_epoch, n)
        with Prefetcher(lambda position: self.make_batch(order, position), positions) as batches:
            for position, batch in zip(positions, batches):
                # blocks while paused; in a torchrun job every rank pauses, resumes and stops
                # here together (host numbers over the gloo control group: no wait for the GPU)
                boundary = position % cfg.update_freq == 0
                if boundary and distributed.agree_control(control):
                    self.stop()
                # mid-epoch checkpoint_last.pt, so that a kill loses at most save_every_minutes
                if boundary and self.save_due():
                    pending = self.snapshot()
                group.batches += 1
                group.tokens += batch.tokens
                group.padded_tokens += batch.padded_tokens
                if not group.out_of_memory:  # after an OOM the update is lost anyway
                    out_of_memory = False
                    if t.device.type == "cuda":  # this batch's own peak, for note_peak
                        memory_fit.reset_peak(t.device, sync=False)
                    try:
                        nll = self.forward_backward(batch)
                        group.nll = nll if group.nll is None else group.nll + nll
                    except torch.cuda.OutOfMemoryError:
                        out_of_memory = True
                    if out_of_memory:
                        group.out_of_memory = True
                        self.out_of_memory()
                    else:
                        self.note_peak(batch)
                del batch
                p.batch_in_epoch = position + 1
                done_here += 1
                if not ((position + 1) % cfg.update_freq == 0 or position == n - 1):
                    continue

                # before the gradients travel, the ranks agree (host numbers only) on whether
                # any of them ran out of memory, and on progress being due (rank 0's clock):
                # every rank then takes the same decisions
                now = time.monotonic()
                # the update that reaches max_updates is reported too
                last_update = bool(cfg.max_updates) and t.step + 1 >= cfg.max_updates
                report_due = position == n - 1 or last_update or (
                    distributed.is_main() and now - last_progress >= PROGRESS_SECONDS)
                oom, report = (flag > 0 for flag in distributed.reduce_sums(
                    [float(group.out_of_memory), float(report_due)]))
                if pending is not None:
                    self.timed_save(group, pending)
                    pending = None
                nll_value = math.nan
                if oom:
                    self.out_of_memory()  # every rank drops this update
                    self.bad_batch("oom", epoch, position + 1, group.padded_tokens)
                else:
                    distributed.average_gradients(list(t.model.parameters()))
                    applied, nll_value = self.update(group)
                    if not applied and (t.scaler is None or not math.isfinite(nll_value)):
                        self.bad_batch("nan", epoch, position + 1, group.padded_tokens)
                    else:  # an fp16 overflow is the scaler's normal business
                        self.bad_in_a_row = 0
                if math.isfinite(nll_value):
                    group.loss = nll_value
                    self.local_nll += nll_value
                    self.local_tokens += group.tokens
                if report:
                    last_progress = now
                    self.report(epoch, position, n, world, group, clock, done_here)
                group = _Group()
                self.maybe_memory()
                if cfg.checkpoint_every_updates and t.step != self.update_saved and (
                        t.step % cfg.checkpoint_every_updates == 0 or self.updates_done()):
                    self.save_update_checkpoint()  # and the last update's: averaged with them
                if self.updates_done():
                    self.epoch_sums()
                    return position == n - 1
        self.epoch_sums()
        return True

    def report(self, epoch: int, position: int, n: int, world: int, group: _Group,
               clock: _Clock, done_here: int) -> None:
        """A BatchProgress for the whole job (every rank calls it, rank 0's is written)."""
        t, cfg = self.trainer, self.cfg
        epoch_nll, epoch_tokens, last_nll, last_tokens = self.epoch_sums(group)
        if not last_tokens:
            return  # the update was skipped: no loss to show
        seconds = max(clock.seconds(), 1e-9)
        rate = done_here / seconds
        left_in_epoch = n - position - 1  # this rank's batches
        if cfg.max_updates:  # the last epoch may end early, at max_updates
            left = max(cfg.max_updates - t.step, 0) * cfg.update_freq
            left_in_epoch = min(left_in_epoch, left)
        else:
            left = left_in_epoch + (cfg.epochs - epoch) * n
        self.emit(BatchProgress(
            epoch=epoch, epochs=self.epochs_planned(), batch=(position + 1) * world,
            batches=n * world, step=t.step,
            loss=last_nll / last_tokens, avg_loss=epoch_nll / max(epoch_tokens, 1),
            lr=t.schedule.lr, batches_per_second=round(rate * world, 3),
            tokens_per_second=round((epoch_tokens - self.base_tokens) / seconds, 1),
            eta=round(left_in_epoch / rate, 1) if rate > 0 else 0.0,
            run_eta=round(left / rate, 1) if rate > 0 else None,
            elapsed=round(seconds, 3),
            gnorm=self.gnorm if self.gnorm is not None and math.isfinite(self.gnorm) else None,
            # reading the scale waits for the device: only here, at reporting time
            loss_scale=t.scaler.get_scale() if t.scaler is not None else None,
            max_updates=cfg.max_updates))

    @torch.no_grad()
    def validate(self) -> float | None:
        """Validation NLL per target token; None when a stop came in the middle."""
        t = self.trainer
        t.model.eval()
        nll_sum, tokens_sum, stopped = None, 0, False
        for rows in distributed.shard_list(self.batches.valid):  # each rank a share
            # ranks validate unequal shares: no collective per batch, so no pause here under
            # torchrun (the next update pauses); a stop is summed below
            if (self.control.stop_requested if distributed.active()
                    else self.control.checkpoint()):
                stopped = True
                break
            batch = collate(self.data.valid, rows)
            if t.device.type == "cuda":
                batch = pinned(batch)
            src, tgt_in, keep, target = self.to_device(batch.src, batch.tgt_in, batch.keep,
                                                       batch.target)
            out_of_memory = False
            try:
                with self.kernels(), self.autocast():
                    logits = t.model(src, tgt_in, keep)
                _, nll = label_smoothed_loss(logits, target, 0.0)
            except torch.cuda.OutOfMemoryError:
                out_of_memory = True
            if out_of_memory:
                self.out_of_memory()
                raise EngineError(f"CUDA out of memory during validation ({batch.padded_tokens:,} "
                                  "padded tokens); lower training.max_tokens "
                                  f"(now {self.cfg.max_tokens})")
            nll_sum = nll if nll_sum is None else nll_sum + nll  # on the device until the end
            tokens_sum += batch.tokens
        distributed.wait_for_device(t.device)
        local = 0.0 if nll_sum is None else nll_sum.item()
        nll_total, tokens_total, stopped = distributed.reduce_sums([local, tokens_sum, stopped])
        if stopped:
            return None
        t.model.train()
        return nll_total / max(tokens_total, 1)

    def translate(self, model, sources: list[str]) -> list[str]:
        from engine.decode import translate

        ev = self.config.eval
        with torch.no_grad(), self.kernels(), self.autocast():
            # batched by max_tokens: the beam's memory follows the setting people tune
            return translate(model, self.tokenizers.src, self.tokenizers.tgt, sources,
                             beam=ev.beam, length_penalty=ev.length_penalty,
                             max_len_offset=ev.max_len_offset, max_tokens=self.cfg.max_tokens)

    def decode_valid(self, epoch: int, bleu_now: bool) -> float | None:
        """Rank 0: translate the first validation sentences; BLEU on eval.bleu_samples of them
        (when ``bleu_now``) and the first eval.print_samples as a SampleTranslations event."""
        from engine.decode import corpus_bleu

        ev, valid = self.config.eval, self.corpus.valid
        bleu_pairs = (valid[:ev.bleu_samples] if ev.bleu_samples else valid) if bleu_now else []
        pairs = valid[:max(len(bleu_pairs), ev.print_samples)]
        out_of_memory = False
        try:
            hypotheses = self.translate(self.trainer.model, [src for src, _ in pairs])
        except torch.cuda.OutOfMemoryError:
            out_of_memory = True
        if out_of_memory:  # outside the except block, which still holds the tensors
            self.out_of_memory()
            self.emit(Notice(level="warning", text=(
                f"CUDA out of memory while decoding {len(pairs)} validation sentences (beam "
                f"{ev.beam}): no BLEU or samples this time; lower eval.beam or "
                "eval.bleu_samples")))
            return None
        if ev.print_samples:  # emitted after the validation's EpochSummary
            self.samples = SampleTranslations(epoch=epoch, step=self.trainer.step, samples=[
                {"source": src, "reference": ref, "hypothesis": hyp}
                for (src, ref), hyp in zip(pairs[:ev.print_samples], hypotheses)])
        if not bleu_now:
            return None
        references = [tgt for _, tgt in bleu_pairs]
        return round(corpus_bleu(hypotheses[:len(bleu_pairs)], references)[0], 2)

    def finish_epoch(self, epoch: int, epoch_clock: _Clock, complete: bool = True) -> None:
        """Validate, report, keep the best and the periodic checkpoints. ``complete=False``: the
        last validation of a run that max_updates ends inside ``epoch``."""
        t, ev = self.trainer, self.config.eval
        p = self.progress
        val_loss = self.validate()
        if val_loss is None:
            self.stop()  # every batch is done, validation is not: resume validates
        self.check_divergence(epoch, val_loss)
        p.train_loss = p.epoch_nll / max(p.epoch_tokens, 1)
        p.val_loss = val_loss
        bleu_now = bool(ev.bleu_every and epoch % ev.bleu_every == 0)
        if bleu_now or ev.print_samples:
            p.bleu = distributed.from_main(lambda: self.decode_valid(epoch, bleu_now))
        else:
            p.bleu = None
        if complete:
            p.epoch, p.batch_in_epoch, p.epoch_nll, p.epoch_tokens = epoch, 0, 0.0, 0

        p.best_val_loss = min(val_loss, p.best_val_loss or val_loss)
        if ev.best_by == "bleu":
            measured = p.bleu is not None
            improved = measured and (p.best is None or p.bleu > p.best)
            if improved:
                p.best = p.bleu
        else:
            measured = True
            improved = p.best is None or val_loss < p.best
            if improved:
                p.best = val_loss
        if improved:
            p.since_best = 0
        elif measured:
            p.since_best += 1
        self.emit(EpochSummary(
            epoch=epoch, epochs=self.epochs_planned(), step=t.step, train_loss=p.train_loss,
            train_ppl=_ppl(p.train_loss), val_loss=val_loss, val_ppl=_ppl(val_loss), bleu=p.bleu,
            epoch_seconds=round(epoch_clock.seconds(), 3),
            total_seconds=round(self.total_seconds(), 3)))
        if self.samples is not None:
            self.emit(self.samples)
            self.samples = None
        if self.cfg.patience and p.since_best >= self.cfg.patience and complete:
            self.ended = "patience"
            what = "higher validation BLEU" if ev.best_by == "bleu" else "lower validation loss"
            self.emit(Notice(text=(
                f"early stop: {p.since_best} validations without a {what} (best {p.best:.4f}, "
                f"training.patience = {self.cfg.patience}); training ends here")))

        periodic = (complete and not self.cfg.checkpoint_every_updates
                    and epoch % self.cfg.checkpoint_every == 0)
        if periodic:  # recorded before saving, so a resume from this checkpoint knows it too
            p.periodic = [*p.periodic, ckpt.periodic_name(epoch)]
        self.saved_position = None  # same batch position, new validation results: write
        self.save_last()
        if distributed.is_main():  # rank 0 writes the checkpoints
            last = self.run_dir / ckpt.LAST
            if periodic:
                path = self.run_dir / ckpt.periodic_name(epoch)
                self.announce(path, ckpt.copy_checkpoint(last, path))
                ckpt.prune_periodic(self.run_dir, self.cfg.keep_last, p.periodic)
            if improved:
                path = self.run_dir / ckpt.BEST
                self.announce(path, ckpt.copy_checkpoint(last, path))
        distributed.barrier()  # the others wait for those writes with the long timeout

    def check_divergence(self, epoch: int, val_loss: float) -> None:
        """Stop, saving nothing, when the weights have diverged: a non-finite validation loss, or
        one above training.divergence_factor times the best so far. The checkpoints on disk are
        then the last good state, and the message says which one holds it."""
        p = self.progress
        best = p.best_val_loss
        if best is None and self.config.eval.best_by == "loss":
            best = p.best  # a checkpoint from before best_val_loss was recorded
        factor = self.cfg.divergence_factor
        if math.isfinite(val_loss) and (best is None or val_loss <= factor * best):
            return
        last = self.run_dir / ckpt.LAST
        if last.is_file():
            kept = ckpt.load_checkpoint(last, mmap=True)  # only its counters are read
            good = (f"{last} (epoch {kept['epoch']}, batch {kept['batch_in_epoch']}, step "
                    f"{kept['step']}) holds the last good state; resume from it with a lower "
                    "training.lr_factor or training.clip_norm = 1.0")
        elif self.trainer.resumed_from:
            good = (f"{self.trainer.resumed_from} (this run resumed from it) holds the last "
                    "good state")
        else:
            good = "no checkpoint was saved yet"
        worse = "is not finite" if not math.isfinite(val_loss) else (
            f"is more than training.divergence_factor = {factor:g} times the best {best:.4f}")
        raise EngineError(f"training stopped: diverged, validation loss {val_loss:.4g} after "
                          f"epoch {epoch} {worse}; no checkpoint was replaced; {good}")

    # -- the end: average the last checkpoints, decode the test split --

    def average_at_end(self) -> list[Path]:
        """averaged.pt from the newest training.average_last periodic checkpoints (update ones
        when the run writes those); the checkpoints averaged, [] when fewer than two exist."""
        count = self.cfg.average_last
        by_updates = bool(self.cfg.checkpoint_every_updates)
        ours = set(self.progress.periodic)  # never another run's files left in the directory
        paths = [path for path in ckpt.periodic_checkpoints(self.run_dir, by_updates)
                 if path.name in ours][-count:] if count else []
        if len(paths) < 2:
            return []
        if len(paths) < count:
            self.emit(Notice(level="warning", text=(
                f"training.average_last = {count} but {len(paths)} periodic checkpoints are "
                f"kept (training.keep_last = {self.cfg.keep_last}): averaging {len(paths)}")))
        path = self.run_dir / ckpt.AVERAGED
        size = ckpt.save_checkpoint(ckpt.average_checkpoints(paths), path)
        self.announce(path, size)
        self.emit(Notice(text=f"averaged.pt: the mean of the last {len(paths)} checkpoints "
                              f"({', '.join(p.name for p in paths)})"))
        return paths

    def test_bleu(self, averaged_from: list[Path]) -> dict[str, Any]:
        """Decode the test split with averaged.pt (else the current weights, which
        checkpoint_last.pt holds) and emit TestBleu; its two scores for the stage's info."""
        from engine.checkpoint import build_for_inference
        from engine.decode import corpus_bleu, paper_bleu

        t, ev, test = self.trainer, self.config.eval, self.corpus.test
        if not test:
            self.emit(Notice(text="no test split: no test BLEU (give data.test_src and "
                                  "data.test_tgt, or a test_size)"))
            return {}
        name = ckpt.AVERAGED if averaged_from else ckpt.LAST
        self.emit(Notice(text=f"testing {name} on {len(test):,} test sentences (beam "
                              f"{ev.beam}, alpha {ev.length_penalty})"))
        started = time.monotonic()
        model = (build_for_inference(self.run_dir / ckpt.AVERAGED, t.device)[0]
                 if averaged_from else t.model)
        out_of_memory = False
        try:
            hypotheses = self.translate(model, [src for src, _ in test])
        except torch.cuda.OutOfMemoryError:
            out_of_memory = True
        if out_of_memory:  # the training is saved: say how to test it instead
            del model
            self.out_of_memory()
            self.emit(Notice(level="warning", text=(
                f"out of memory decoding the test split: no test BLEU; run transformer-train "
                f"evaluate --checkpoint {self.run_dir / name} --batch-size 16 --paper-bleu "
                "--src TEST_SOURCE --ref TEST_REFERENCE")))
            return {}
        references = [tgt for _, tgt in test]
        sacre, sacre_signature = corpus_bleu(hypotheses, references)
        paper, paper_signature = paper_bleu(hypotheses, references)
        self.emit(TestBleu(
            checkpoint=str(self.run_dir / name), sentences=len(test), sacrebleu=round(sacre, 2),
            sacrebleu_signature=sacre_signature, paper_bleu=round(paper, 2),
            paper_signature=paper_signature, beam=ev.beam, length_penalty=ev.length_penalty,
            seconds=round(time.monotonic() - started, 3),
            averaged_from=[p.name for p in averaged_from]))
        return {"test_bleu": round(sacre, 2), "test_paper_bleu": round(paper, 2)}

    def end_of_training(self) -> dict[str, Any]:
        """Rank 0 averages and tests (the other ranks wait); nothing when nothing was trained."""
        if self.trainer.step == 0:
            return {}
        scores: dict[str, Any] = {}

        def work() -> None:
            scores.update(self.test_bleu(self.average_at_end()))

        distributed.from_main(work)
        return scores

    def run(self) -> dict[str, Any]:
        t, cfg = self.trainer, self.cfg
        p = self.progress
        if len(self.data.valid) == 0:
            raise DataError("no validation pairs are left after encoding (all longer than "
                            f"model.max_len = {self.config.model.max_len}?)")
        p.batches_per_epoch = p.batches_per_epoch or len(self.batches.train)
        if p.batches_per_epoch != len(self.batches.train) and p.batch_in_epoch:
            self.emit(Notice(level="warning", text=(
                f"the checkpoint's run had {p.batches_per_epoch} batches per epoch, this one "
                f"has {len(self.batches.train)} (max_tokens changed?): epoch {p.epoch + 1} "
                f"continues at batch {p.batch_in_epoch + 1} of the new batches")))
        p.batches_per_epoch = len(self.batches.train)
        if cfg.max_updates and self.updates_done():
            self.emit(Notice(text=f"the checkpoint has already made {t.step:,} updates of "
                                  f"{cfg.max_updates:,}; raise training.max_updates to train more"))
        elif not cfg.max_updates and p.epoch >= cfg.epochs:
            self.emit(Notice(text=f"the checkpoint has already trained {p.epoch} epochs of "
                                  f"{cfg.epochs}; raise training.epochs to train more"))
        first_epoch = p.epoch + 1
        # by updates: epochs until max_updates; by epochs: training.epochs
        epochs = (itertools.count(first_epoch) if cfg.max_updates
                  else range(first_epoch, cfg.epochs + 1))
        ended = "max_updates" if cfg.max_updates else "epochs"
        if not self.updates_done() and (cfg.max_updates or first_epoch <= cfg.epochs):
            self.preflight_worst_case()  # a run that would run out of memory fails now
        try:
            for epoch in epochs:
                if self.updates_done():
                    break
                epoch_clock = _Clock(self.control)
                complete = self.train_epoch(epoch)
                self.finish_epoch(epoch, epoch_clock, complete)
                if self.ended:
                    ended = self.ended
                    break
        except RunStopped:
            self.end_of_training()  # a stopped run is tested too: what it has learned so far
            raise
        self.maybe_memory(force=True)
        p.seconds = self.total_seconds()
        info = {"epochs": p.epoch, "steps": t.step, "ended": ended, "train_loss": p.train_loss,
                "val_loss": p.val_loss, "val_ppl": _ppl(p.val_loss), "bleu": p.bleu,
                "best": p.best, "seconds": round(p.seconds, 1)}
        info.update(self.end_of_training())
        return info


def _ppl(loss: float | None) -> float:
    if loss is None:
        return float("nan")
    return math.exp(min(loss, 50.0))  # exp(50) already says "untrained"; avoid overflow


def run_train_stage(config: RunConfig, trainer: Trainer, corpus: Corpus, tokenizers: TokenizerSet,
                    data: EncodedData, batches: Batches, run_dir: Path, emit: Emit,
                    control: RunControl) -> StageResult[Trainer]:
    """Train epochs ``progress.epoch + 1 .. training.epochs``; the output is the trained trainer."""
    loop = TrainLoop(config, trainer, corpus, tokenizers, data, batches, run_dir, emit, control)
    return StageResult(output=trainer, info=loop.run())
