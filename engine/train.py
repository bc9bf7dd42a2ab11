"""Model and train stages: build (or restore) the Transformer, then train it epoch by epoch.

One optimizer update = ``training.update_freq`` batches. Per batch: forward under autocast,
label-smoothed cross entropy over the real target tokens, backward. Per update: gradient norm
(and clipping), Adam (0.9, 0.98, 1e-9), the paper's learning-rate schedule

    lr = lr_factor * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)

Every loss the run reports (batch, epoch, validation) is the cross entropy per target token
without label smoothing, so perplexity = exp(loss) and train and validation compare.

Stops and resumes are exact: a stop is honoured at an update boundary, the checkpoint records how
many batches of the epoch are done and every random generator's state, and batch order depends
only on the seed and the epoch, so a resumed run continues with the very batch, dropout mask and
weights that an uninterrupted run would have used next.
"""

from __future__ import annotations

import math
import random
import time
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
from engine.device import pick_device, resolve_precision
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
)
from engine.loss import label_smoothed_loss, target_positions
from engine.memory import MemoryProbe, trim_heap
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
    parallel: Any = None  # DistributedDataParallel around model in a torchrun job, else None

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

    trainer.parallel = distributed.wrap_model(model)
    parameters = sum(p.numel() for p in model.parameters())  # tied weights counted once
    info = {"parameters": parameters, "device": device.type, "precision": precision}
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
        self.session = _Clock(control)
        self.seconds_before = self.progress.seconds

    # -- helpers --

    def autocast(self):
        t = self.trainer
        return torch.autocast(t.device.type, dtype=t.amp_dtype, enabled=t.amp_dtype is not None)

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
        sample data at max_tokens 6,208, glibc's defaults or ours alike), past what the fit
        measured for a step. The price is page faults (kernel time), paid only under a budget."""
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

    def save_last(self) -> None:
        t = self.trainer
        p = self.progress
        position = (p.epoch, p.batch_in_epoch)
        if self.saved_position == position:
            return
        rank_rng = distributed.gather_rng_states()  # every rank's dropout generator, for resume
        if not distributed.is_main():
            self.saved_position = position
            return  # rank 0 writes the checkpoint
        p.seconds = self.total_seconds()
        path = self.run_dir / ckpt.LAST
        state = ckpt.training_state(t, self.config, self.tokenizers, distributed.world_size())
        if rank_rng is not None:
            state["rank_rng"] = rank_rng
        size = ckpt.save_checkpoint(state, path)
        self.saved_position = position
        self.announce(path, size)

    def announce(self, path: Path, size: int) -> None:
        t = self.trainer
        p = self.progress
        self.emit(CheckpointSaved(path=str(path), name=path.name, epoch=p.epoch, step=t.step,
                                  val_loss=p.val_loss, bleu=p.bleu, size_bytes=size,
                                  saved_at=time.time()))

    def stop(self) -> None:
        self.save_last()
        raise RunStopped()

    def bad_batch(self, reason: str, epoch: int, batch: int, tokens: int) -> None:
        if reason == "oom":
            self.oom_skipped += 1
        if reason == "oom" and distributed.active():
            raise EngineError(
                f"CUDA out of memory on {distributed.describe()} (epoch {epoch}, batch {batch}, "
                f"{tokens:,} padded tokens): one process cannot skip a batch while the others "
                f"wait for its gradients; lower training.max_tokens (now {self.cfg.max_tokens}) "
                "and raise training.update_freq to keep the batch size")
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

    # -- one batch, one update --

    def forward_backward(self, batch) -> float | None:
        """Adds this batch's gradients; its NLL per target token, or None when not finite."""
        t = self.trainer
        keep, target = target_positions(batch.tgt_out)  # on the host: padding never reaches
        src, tgt_in = batch.src.to(t.device), batch.tgt_in.to(t.device)  # the output layer
        keep, target = keep.to(t.device), target.to(t.device)
        with self.autocast():
            logits = (t.model if t.parallel is None else t.parallel)(src, tgt_in, keep)
        loss, nll = label_smoothed_loss(logits, target, self.cfg.label_smoothing)
        del logits  # the loss keeps its gradient, not the logits
        tokens = batch.tokens
        loss_value, nll_value = torch.stack([loss.detach(), nll.detach()]).tolist()  # one sync
        finite = math.isfinite(loss_value) and math.isfinite(nll_value)
        # under DDP every rank must take part in the gradient all-reduce: a NaN backward makes
        # the averaged gradients NaN on every rank, and every rank skips that update
        if not finite and t.parallel is None:
            return None
        loss = loss / tokens / self.cfg.update_freq
        (t.scaler.scale(loss) if t.scaler is not None else loss).backward()
        return nll_value / tokens if finite else None

    def update(self) -> bool:
        """Apply the accumulated gradients; False when they were not finite (update skipped)."""
        t = self.trainer
        params = [p for p in t.model.parameters() if p.grad is not None]
        if not params:
            return False
        if t.scaler is not None:
            t.scaler.unscale_(t.optimizer)
        # the total norm in one foreach pass; with clipping off (inf) the gradients stay as they are
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.clip_norm or math.inf)
        finite = bool(torch.isfinite(norm))
        if t.scaler is not None:
            scale = t.scaler.get_scale()
            t.scaler.step(t.optimizer)  # skips the step itself when gradients overflowed
            t.scaler.update()
            applied = t.scaler.get_scale() >= scale
        elif finite:
            t.optimizer.step()
            applied = True
        else:
            applied = False
        t.optimizer.zero_grad(set_to_none=True)
        if applied:
            t.schedule.step()
        # an fp16 overflow is the scaler's normal business; non-finite bf16/fp32 gradients are not
        return applied or t.scaler is not None

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
                with distributed.sync_gradients(t.parallel, False):  # this rank alone
                    self.forward_backward(batch)
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

    def train_epoch(self, epoch: int) -> None:
        t, cfg, control = self.trainer, self.cfg, self.control
        p = self.progress
        order = distributed.shard(self.batches.epoch_order(epoch))  # this rank's batches
        n = len(order)
        world = distributed.world_size()  # progress counts the whole job's batches
        t.model.train()
        clock = _Clock(control)
        done_here = tokens_here = 0
        last_progress = 0.0
        for position in range(p.batch_in_epoch, n):
            boundary = position % cfg.update_freq == 0
            # blocks while paused; in a torchrun job a stop on any rank stops every rank here
            if distributed.any_rank(control.checkpoint()) and boundary:
                self.stop()
            batch = collate(self.data.train, self.batches.train[order[position]])
            last_in_group = (position + 1) % cfg.update_freq == 0 or position == n - 1
            out_of_memory = False
            if t.device.type == "cuda":  # (on the CPU the process's peak is left alone:
                memory_fit.reset_peak(t.device, sync=False)  # /usr/bin/time reads it)
            try:
                with distributed.sync_gradients(t.parallel, last_in_group):
                    nll = self.forward_backward(batch)
            except torch.cuda.OutOfMemoryError:
                out_of_memory, nll = True, None
            # outside the except block, whose traceback still holds the batch's tensors; the
            # group's earlier gradients go too, the rest of the group still counts
            if out_of_memory:
                t.optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                self.bad_batch("oom", epoch, position + 1, batch.padded_tokens)
            # the whole job's loss and target tokens at this position (one process: the batch's)
            nll, tokens = distributed.reduce_batch(nll, batch.tokens)
            if nll is None and not out_of_memory:
                self.bad_batch("nan", epoch, position + 1, batch.padded_tokens)
            if nll is not None:
                p.epoch_nll += nll * tokens
                p.epoch_tokens += tokens
                tokens_here += tokens
            if last_in_group and not self.update() and nll is not None:
                self.bad_batch("nan", epoch, position + 1, batch.padded_tokens)
                nll = None
            self.note_peak(batch)
            if nll is not None:
                self.bad_in_a_row = 0
            p.batch_in_epoch = position + 1
            done_here += 1

            now = time.monotonic()
            if nll is not None and (now - last_progress >= PROGRESS_SECONDS or position == n - 1):
                last_progress = now
                seconds = max(clock.seconds(), 1e-9)
                rate = done_here / seconds
                self.emit(BatchProgress(
                    epoch=epoch, epochs=cfg.epochs, batch=(position + 1) * world,
                    batches=n * world, step=t.step,
                    loss=nll, avg_loss=p.epoch_nll / max(p.epoch_tokens, 1),
                    lr=t.schedule.lr, batches_per_second=round(rate * world, 3),
                    tokens_per_second=round(tokens_here / seconds, 1),
                    eta=round((n - position - 1) / rate, 1) if rate > 0 else 0.0,
                    elapsed=round(seconds, 3)))
            self.maybe_memory()

    @torch.no_grad()
    def validate(self) -> float | None:
        """Validation NLL per target token; None when a stop came in the middle."""
        t = self.trainer
        t.model.eval()
        nll_sum, tokens_sum, stopped = 0.0, 0, False
        for rows in distributed.shard_list(self.batches.valid):  # each rank a share
            if self.control.checkpoint():
                stopped = True
                break
            batch = collate(self.data.valid, rows)
            keep, target = target_positions(batch.tgt_out)
            try:
                with self.autocast():
                    logits = t.model(batch.src.to(t.device), batch.tgt_in.to(t.device),
                                     keep.to(t.device))
            except torch.cuda.OutOfMemoryError:
                raise EngineError(f"CUDA out of memory during validation ({batch.padded_tokens:,} "
                                  "padded tokens); lower training.max_tokens "
                                  f"(now {self.cfg.max_tokens})") from None
            _, nll = label_smoothed_loss(logits, target.to(t.device), 0.0)
            nll_sum += nll.item()
            tokens_sum += batch.tokens
        nll_sum, tokens_sum, stopped = distributed.reduce_sums([nll_sum, tokens_sum, stopped])
        if stopped:
            return None
        t.model.train()
        return nll_sum / max(tokens_sum, 1)

    def bleu(self) -> float:
        from engine.decode import corpus_bleu, translate

        t, ev = self.trainer, self.config.eval
        corpus = self.corpus
        pairs = corpus.valid[:ev.bleu_samples] if ev.bleu_samples else corpus.valid
        t.model.eval()
        with torch.no_grad(), self.autocast():
            hypotheses = translate(t.model, self.tokenizers.src, self.tokenizers.tgt,
                                   [src for src, _ in pairs], beam=ev.beam,
                                   length_penalty=ev.length_penalty,
                                   max_len_offset=ev.max_len_offset,
                                   max_tokens=self.cfg.max_tokens)
        t.model.train()
        return round(corpus_bleu(hypotheses, [tgt for _, tgt in pairs])[0], 2)

    def finish_epoch(self, epoch: int, epoch_clock: _Clock) -> None:
        t, ev = self.trainer, self.config.eval
        p = self.progress
        val_loss = self.validate()
        if val_loss is None:
            self.stop()  # every batch is done, validation is not: resume validates
        p.train_loss = p.epoch_nll / max(p.epoch_tokens, 1)
        p.val_loss = val_loss
        bleu_now = ev.bleu_every and epoch % ev.bleu_every == 0
        p.bleu = distributed.from_main(self.bleu) if bleu_now else None  # rank 0 decodes
        p.epoch, p.batch_in_epoch, p.epoch_nll, p.epoch_tokens = epoch, 0, 0.0, 0

        if ev.best_by == "bleu":
            improved = p.bleu is not None and (p.best is None or p.bleu > p.best)
            if improved:
                p.best = p.bleu
        else:
            improved = p.best is None or val_loss < p.best
            if improved:
                p.best = val_loss
        self.emit(EpochSummary(
            epoch=epoch, epochs=self.cfg.epochs, step=t.step, train_loss=p.train_loss,
            train_ppl=_ppl(p.train_loss), val_loss=val_loss, val_ppl=_ppl(val_loss), bleu=p.bleu,
            epoch_seconds=round(epoch_clock.seconds(), 3),
            total_seconds=round(self.total_seconds(), 3)))

        self.save_last()
        if not distributed.is_main():
            return  # rank 0 writes the checkpoints
        last = self.run_dir / ckpt.LAST
        if epoch % self.cfg.checkpoint_every == 0:
            path = self.run_dir / ckpt.periodic_name(epoch)
            self.announce(path, ckpt.copy_checkpoint(last, path))
            ckpt.prune_periodic(self.run_dir, self.cfg.keep_last)
        if improved:
            path = self.run_dir / ckpt.BEST
            self.announce(path, ckpt.copy_checkpoint(last, path))

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
        if p.epoch >= cfg.epochs:
            self.emit(Notice(text=f"the checkpoint has already trained {p.epoch} epochs of "
                                  f"{cfg.epochs}; raise training.epochs to train more"))
        first_epoch = p.epoch + 1
        if first_epoch <= cfg.epochs:
            self.preflight_worst_case()
        self.maybe_memory(force=True)
        for epoch in range(first_epoch, cfg.epochs + 1):
            epoch_clock = _Clock(self.control)
            self.train_epoch(epoch)
            self.finish_epoch(epoch, epoch_clock)
        self.maybe_memory(force=True)
        p.seconds = self.total_seconds()
        return {"epochs": p.epoch, "steps": t.step, "train_loss": p.train_loss,
                "val_loss": p.val_loss, "val_ppl": _ppl(p.val_loss), "bleu": p.bleu,
                "best": p.best, "seconds": round(p.seconds, 1)}


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
