"""Validation and testing: the validation loss (every rank a share), BLEU and sample
translations of the first validation sentences (rank 0), and test BLEU at the end.

Every loss the run reports is the cross entropy per target token without label smoothing, so
perplexity = exp(loss) and train and validation compare.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from engine import checkpoint as ckpt
from engine import distributed
from engine.batching import collate
from engine.errors import EngineError
from engine.events import Emit, Notice, SampleTranslations, TestBleu
from engine.loss import label_smoothed_loss
from engine.prefetch import pinned

if TYPE_CHECKING:
    from engine.batching import Batches
    from engine.config import RunConfig
    from engine.control import RunControl
    from engine.data.corpus import Corpus
    from engine.encode import EncodedData
    from engine.tokenizer.stage import TokenizerSet
    from engine.train.step import UpdateStep


def ppl(loss: float | None) -> float:
    if loss is None:
        return float("nan")
    return math.exp(min(loss, 50.0))  # exp(50) already says "untrained"; avoid overflow


class Validation:
    def __init__(self, config: RunConfig, step: UpdateStep, corpus: Corpus,
                 tokenizers: TokenizerSet, data: EncodedData, batches: Batches,
                 control: RunControl, emit: Emit) -> None:
        self.config, self.step, self.state = config, step, step.state
        self.corpus, self.tokenizers, self.data, self.batches = corpus, tokenizers, data, batches
        self.control, self.emit = control, emit
        self.samples: SampleTranslations | None = None  # rank 0: this validation's samples

    @torch.no_grad()
    def loss(self) -> float | None:
        """Validation NLL per target token; None when a stop came in the middle."""
        s, step = self.state, self.step
        s.model.eval()
        nll_sum, tokens_sum, stopped = None, 0, False
        for rows in distributed.shard_list(self.batches.valid):  # each rank a share
            # ranks validate unequal shares: no collective per batch, so no pause here under
            # torchrun (the next update pauses); a stop is summed below
            if (self.control.stop_requested if distributed.active()
                    else self.control.checkpoint()):
                stopped = True
                break
            batch = collate(self.data.valid, rows)
            if s.device.type == "cuda":
                batch = pinned(batch)
            src, tgt_in, keep, target = step.to_device(batch.src, batch.tgt_in, batch.keep,
                                                       batch.target)
            out_of_memory = False
            try:
                with step.kernels(), step.autocast():
                    logits = s.model(src, tgt_in, keep)
                _, nll = label_smoothed_loss(logits, target, 0.0)
            except torch.cuda.OutOfMemoryError:
                out_of_memory = True
            if out_of_memory:
                step.recover_from_oom()
                raise EngineError(f"CUDA out of memory during validation ({batch.padded_tokens:,} "
                                  "padded tokens); lower training.max_tokens "
                                  f"(now {self.config.training.max_tokens})")
            nll_sum = nll if nll_sum is None else nll_sum + nll  # on the device until the end
            tokens_sum += batch.tokens
        distributed.wait_for_device(s.device)
        local = 0.0 if nll_sum is None else nll_sum.item()
        nll_total, tokens_total, stopped = distributed.reduce_sums([local, tokens_sum, stopped])
        if stopped:
            return None
        s.model.train()
        return nll_total / max(tokens_total, 1)

    def translate(self, model, sources: list[str]) -> list[str]:
        from engine.decode import translate

        ev = self.config.eval
        with torch.no_grad(), self.step.kernels(), self.step.autocast():
            # batched by max_tokens: the beam's memory follows the setting people tune
            return translate(model, self.tokenizers.src, self.tokenizers.tgt, sources,
                             beam=ev.beam, length_penalty=ev.length_penalty,
                             max_len_offset=ev.max_len_offset,
                             max_tokens=self.config.training.max_tokens)

    def decode_valid(self, epoch: int, bleu_now: bool) -> float | None:
        """Rank 0: translate the first validation sentences; BLEU on eval.bleu_samples of them
        (when ``bleu_now``) and the first eval.print_samples as a SampleTranslations event,
        kept in ``samples`` (emitted after the validation's EpochSummary)."""
        from engine.decode import corpus_bleu

        ev, valid = self.config.eval, self.corpus.valid
        bleu_pairs = (valid[:ev.bleu_samples] if ev.bleu_samples else valid) if bleu_now else []
        pairs = valid[:max(len(bleu_pairs), ev.print_samples)]
        out_of_memory = False
        try:
            hypotheses = self.translate(self.state.model, [src for src, _ in pairs])
        except torch.cuda.OutOfMemoryError:
            out_of_memory = True
        if out_of_memory:  # outside the except block, which still holds the tensors
            self.step.recover_from_oom()
            self.emit(Notice(level="warning", text=(
                f"CUDA out of memory while decoding {len(pairs)} validation sentences (beam "
                f"{ev.beam}): no BLEU or samples this time; lower eval.beam or "
                "eval.bleu_samples")))
            return None
        if ev.print_samples:
            self.samples = SampleTranslations(epoch=epoch, step=self.state.step, samples=[
                {"source": src, "reference": ref, "hypothesis": hyp}
                for (src, ref), hyp in zip(pairs[:ev.print_samples], hypotheses)])
        if not bleu_now:
            return None
        references = [tgt for _, tgt in bleu_pairs]
        return round(corpus_bleu(hypotheses[:len(bleu_pairs)], references)[0], 2)

    def emit_samples(self) -> None:
        if self.samples is not None:
            self.emit(self.samples)
            self.samples = None

    def test_bleu(self, run_dir: Path, role: str, averaged_from: list[Path] = ()
                  ) -> dict[str, Any]:
        """Decode the test split with one set of weights and emit TestBleu; its scores for
        the stage's info. ``role``: "averaged" (averaged.pt, the mean of ``averaged_from``),
        "best" (checkpoint_best.pt) or "last" (the current weights, which checkpoint_last.pt
        holds)."""
        from engine.checkpoint import build_for_inference
        from engine.decode import corpus_bleu, paper_bleu

        s, ev, test = self.state, self.config.eval, self.corpus.test
        if not test:
            self.emit(Notice(text="no test split: no test BLEU (give data.test_src and "
                                  "data.test_tgt, or a test_size)"))
            return {}
        name = {"averaged": ckpt.AVERAGED, "best": ckpt.BEST}.get(role, ckpt.LAST)
        self.emit(Notice(text=f"testing {name} on {len(test):,} test sentences (beam "
                              f"{ev.beam}, alpha {ev.length_penalty})"))
        started = time.monotonic()
        model = (build_for_inference(run_dir / name, s.device)[0] if role != "last"
                 else s.model)
        out_of_memory = False
        try:
            hypotheses = self.translate(model, [src for src, _ in test])
        except torch.cuda.OutOfMemoryError:
            out_of_memory = True
        if out_of_memory:  # the training is saved: say how to test it instead
            del model
            self.step.recover_from_oom()
            self.emit(Notice(level="warning", text=(
                f"out of memory decoding the test split: no test BLEU; run transformer-train "
                f"evaluate --checkpoint {run_dir / name} --batch-size 16 --paper-bleu "
                "--src TEST_SOURCE --ref TEST_REFERENCE")))
            return {}
        references = [tgt for _, tgt in test]
        sacre, sacre_signature = corpus_bleu(hypotheses, references)
        lower, lower_signature = corpus_bleu(hypotheses, references, lowercase=True)
        paper, paper_signature = paper_bleu(hypotheses, references)
        self.emit(TestBleu(
            checkpoint=str(run_dir / name), sentences=len(test), sacrebleu=round(sacre, 2),
            sacrebleu_signature=sacre_signature, paper_bleu=round(paper, 2),
            paper_signature=paper_signature, beam=ev.beam, length_penalty=ev.length_penalty,
            seconds=round(time.monotonic() - started, 3),
            averaged_from=[p.name for p in averaged_from], role=role,
            lowercase_bleu=round(lower, 2), lowercase_signature=lower_signature))
        scores = {"test_bleu": round(sacre, 2), "test_bleu_lowercase": round(lower, 2),
                  "test_paper_bleu": round(paper, 2)}
        return {f"{key}_best" if role == "best" else key: value for key, value in scores.items()}
