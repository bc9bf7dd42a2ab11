"""The memory watch: MemorySample events, each batch's peak, and the preflight of the worst case
(the epoch's most memory-hungry batch, and validation beam search) before training starts."""

from __future__ import annotations

import os
import socket
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from engine import distributed
from engine import fit as memory_fit
from engine.batching import collate, decoder_lengths
from engine.errors import EngineError
from engine.events import Emit, MemorySample, Notice
from engine.memory import MemoryProbe, current_usage, peak_since_reset, reset_peak, trim_heap

if TYPE_CHECKING:
    from engine.batching import Batch, Batches
    from engine.config import RunConfig
    from engine.data.corpus import Corpus
    from engine.encode import EncodedData
    from engine.tokenizer.stage import TokenizerSet
    from engine.train.step import UpdateStep

MEMORY_SECONDS = 5.0  # one MemorySample every few seconds


def rank_pids() -> list[int]:
    """The pids of the run's processes on this host (rank 0's first), for the memory panel to
    mark as ours among the GPU's processes. Every rank must call it (a sum over the ranks:
    each fills its own slot with its pid and a checksum of its host name)."""
    world, rank = distributed.world_size(), distributed.rank()
    slots = [0.0] * (2 * world)
    slots[2 * rank] = float(os.getpid())
    slots[2 * rank + 1] = float(zlib.crc32(socket.gethostname().encode()))
    summed = distributed.reduce_sums(slots)
    host = summed[2 * rank + 1]
    return [int(summed[2 * r]) for r in range(world) if summed[2 * r + 1] == host]


class MemoryWatch:
    """What a person tuning max_tokens against out-of-memory errors needs (MemorySample)."""

    def __init__(self, config: RunConfig, step: UpdateStep, run_dir: Path, emit: Emit) -> None:
        self.config, self.training, self.step = config, config.training, step
        self.device = step.state.device
        self.emit = emit
        self.probe = MemoryProbe()  # also read by the app's panel: one probe for both
        self.last_sample = 0.0
        self.budget = memory_fit.memory_budget(config, self.device)
        fitted = memory_fit.matching_fit(config, run_dir, self.device)
        self.fit_max_tokens = fitted.max_tokens if fitted is not None else None
        self.fit_peak = None if fitted is None else next(
            (p.peak_bytes for p in fitted.points if p.max_tokens == self.training.max_tokens),
            None)
        self.pids = rank_pids()  # every rank calls this: a collective
        self.recent_peak: int | None = None
        self.largest_peak: int | None = None
        self.largest_batch: list[int] = []
        self.oom_skipped = 0

    def maybe_sample(self, force: bool = False) -> None:
        """A MemorySample every MEMORY_SECONDS (or now, with ``force``)."""
        now = time.monotonic()
        if not force and now - self.last_sample < MEMORY_SECONDS:
            return
        self.last_sample = now
        reading = self.probe.sample()
        self.emit(MemorySample(
            devices=reading.devices, torch_allocated=reading.torch_allocated,
            torch_reserved=reading.torch_reserved, torch_peak=reading.torch_peak,
            process_rss=reading.process_rss or 0, system_used=reading.system_used or 0,
            system_total=reading.system_total or 0, max_tokens=self.training.max_tokens,
            budget=self.budget, recent_peak=self.recent_peak,
            largest_batch_peak=self.largest_peak, largest_batch=self.largest_batch,
            headroom=None if self.largest_peak is None else self.budget - self.largest_peak,
            oom_skipped=self.oom_skipped, fit_max_tokens=self.fit_max_tokens,
            fit_peak=self.fit_peak, device=str(self.device), pids=self.pids))
        self.recent_peak = None

    def start_epoch(self) -> None:
        """Each epoch's peak on its own (CUDA's allocator)."""
        if self.device.type == "cuda":
            reset_peak(self.device, sync=False)

    def before_batch(self) -> None:
        if self.device.type == "cuda":  # this batch's own peak, for note_peak
            reset_peak(self.device, sync=False)

    def note_peak(self, batch: Batch) -> None:
        """This batch's peak memory (from ``before_batch``): the sparkline's point and the run's
        largest so far, with the batch's shape. On the CPU with a memory budget, the heap's free
        memory goes back to the kernel after every batch: resident memory otherwise creeps up
        with the changing batch shapes (measured: 1.3 -> 2.0 GiB in one epoch of sample data at
        max_tokens 6,208, glibc's defaults or ours alike, most of it oneDNN's kernel cache,
        since capped in engine/__init__.py), past what the fit measured for a step. The price
        is page faults (kernel time), paid only under a budget."""
        if self.device.type == "cuda":
            peak = peak_since_reset(self.device, sync=False)
        else:  # resident memory after the batch: its peak is not measured per batch on the CPU
            peak = current_usage(self.device)
            if self.training.memory_budget:
                trim_heap()
        self.recent_peak = max(self.recent_peak or 0, peak)
        if self.largest_peak is None or peak > self.largest_peak:
            self.largest_peak = peak
            self.largest_batch = [batch.src.size(0), batch.src.size(1), batch.tgt_in.size(1)]

    # -- the worst case first --

    def preflight(self, data: EncodedData, batches: Batches, corpus: Corpus,
                  tokenizers: TokenizerSet, run_dir: Path) -> None:
        """One step on the epoch's most memory-hungry batch and one beam search on the longest
        validation sentences before training, so that a run that would run out of memory fails
        in its first minute, naming the max_tokens that fits. On the CPU only against
        training.memory_budget (the whole RAM is no useful limit: the system swaps or kills)."""
        s, training, device = self.step.state, self.training, self.device
        if device.type == "cpu" and not training.memory_budget:
            return
        budget = memory_fit.memory_budget(self.config, device)
        budget_source = ("training.memory_budget" if training.memory_budget
                         else f"{torch.cuda.get_device_name(device)}'s memory")
        train = data.train
        index = memory_fit.hungriest_batch(batches.train, train.src_lengths,
                                           decoder_lengths(train), self.config.model,
                                           tokenizers.tgt.get_vocab_size())
        rows = batches.train[index]
        batch = collate(train, rows, self.step.length_multiple)
        what = (f"the epoch's largest batch ({len(rows)} sentences of up to "
                f"{batch.src.size(1)}/{batch.tgt_in.size(1)} tokens)")
        # Adam's moments appear at the first update: counted, not allocated, before it
        adam = 0 if s.optimizer.state else 2 * sum(p.numel() * 4 for p in s.model.parameters())
        cuda_rng = [device] if device.type == "cuda" else []
        held = current_usage(device)
        with torch.random.fork_rng(devices=cuda_rng):  # dropout here leaves the run's draws
            reset_peak(device)
            try:
                self.step.forward_backward(batch)  # this rank alone: gradients travel later
                peak = peak_since_reset(device) + adam
            except torch.cuda.OutOfMemoryError:
                peak = None
            finally:
                s.optimizer.zero_grad(set_to_none=True)
        if peak is None or peak > budget:
            if peak is None:
                torch.cuda.empty_cache()
            fits = memory_fit.max_tokens_that_fits(training.max_tokens, peak, held, adam, budget,
                                                   self.config.model.max_len)
            fitted = memory_fit.matching_fit(self.config, run_dir, device)
            raise EngineError(memory_fit.preflight_failure(
                what, peak, budget, budget_source, training.max_tokens,
                memory_fit.max_tokens_remedy(fits, fitted)))
        text = (f"preflight: {what} peaked at {peak / 2**30:.2f} GiB of the "
                f"{budget / 2**30:.2f} GiB budget")
        beam_peak = (self.preflight_beam_search(corpus, tokenizers) if distributed.is_main()
                     else None)
        if beam_peak is not None:
            if beam_peak > budget:
                raise EngineError(memory_fit.preflight_failure(
                    "validation beam search on the longest validation sentences", beam_peak,
                    budget, budget_source, training.max_tokens,
                    "lower eval.beam or eval.bleu_samples, or set eval.bleu_every = 0"))
            text += f"; validation beam search {beam_peak / 2**30:.2f} GiB"
        self.emit(Notice(text=text))

    def preflight_beam_search(self, corpus: Corpus, tokenizers: TokenizerSet) -> int | None:
        """Peak memory of validation beam search on the longest sentences BLEU decodes (one
        batch of translate's), or None when BLEU is off."""
        from engine.decode import translate

        s, ev = self.step.state, self.config.eval
        if not ev.bleu_every:
            return None
        sources = [src for src, _ in (corpus.valid[:ev.bleu_samples] if ev.bleu_samples
                                      else corpus.valid)]
        encoded = tokenizers.src.encode_batch(sources, add_special_tokens=False)
        longest = sorted(range(len(sources)), key=lambda i: len(encoded[i].ids))
        longest = longest[-memory_fit.BEAM_SENTENCES:]
        reset_peak(self.device)
        with torch.no_grad(), self.step.autocast():
            translate(s.model, tokenizers.src, tokenizers.tgt, [sources[i] for i in longest],
                      beam=ev.beam, length_penalty=ev.length_penalty,
                      max_len_offset=ev.max_len_offset, batch_size=memory_fit.BEAM_SENTENCES,
                      max_tokens=self.training.max_tokens)
        s.model.train()
        return peak_since_reset(self.device)
