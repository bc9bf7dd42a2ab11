"""The headless consumer: turns events into the progress lines people know from the seed scripts.

Progress events arrive a few times a second. On a terminal the current line is rewritten in place
and fitted to the terminal's width (the least needed fields go first, so that a line never wraps:
a wrapped line breaks the in-place update into one printed line per batch). Elsewhere (a log
file under nohup) a whole line is printed at most every ``log_interval`` seconds, never with
'\r'. Final states (100%) are always printed.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

from engine import events as ev
from engine.versions import versions_text

# A progress line is fields joined by " | "; on a narrow terminal the fields with the highest
# number here are left out first.
Field = tuple[int, str]


def _fmt_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _fmt_size(size: int) -> str:
    return f"{size / 2**20:.1f} MB" if size < 2**30 else f"{size / 2**30:.2f} GB"


class HeadlessPrinter:
    def __init__(self, stream: TextIO | None = None, log_interval: float = 5.0,
                 width: int | None = None) -> None:
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty()
        self.log_interval = 0.0 if self.live else log_interval
        self.width = width  # columns of the terminal; None: ask it at each line (it may resize)
        self._last_progress: float | None = None  # monotonic time of the last progress line
        self._open_line = False  # a progress line is on screen without its newline
        self._merge_header = False  # the merges' header line was printed for this merge phase
        self._count_header = False

    def __call__(self, event: ev.Event) -> None:
        handler = getattr(self, f"_on_{type(event).__name__}", None)
        if handler is not None:
            handler(event)

    # --- output helpers ---

    def _line(self, text: str) -> None:
        if self._open_line:
            self.stream.write("\n")
            self._open_line = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def _progress(self, fields: list[Field], final: bool) -> None:
        now = time.monotonic()
        if (not final and self._last_progress is not None
                and now - self._last_progress < self.log_interval):
            return
        self._last_progress = now
        if self.live:
            width = self.width or shutil.get_terminal_size((100, 24)).columns
            text = fit(fields, width - 1)  # the last column would wrap on some terminals
            self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
            self._open_line = not final
            self.stream.flush()
        else:
            self._line(fit(fields, None))

    # --- run lifecycle ---

    def _on_RunStarted(self, e: ev.RunStarted) -> None:
        ran = f" | {versions_text(e.versions)}" if e.versions else ""
        self._line(f"Run {e.preset!r} in {e.run_dir} | stages: {', '.join(e.stages)}{ran}")

    def _on_Preflight(self, e: ev.Preflight) -> None:
        if e.device == "cuda":
            gpus = ", ".join(f"{n} ({m:.0f} GB)" for n, m in zip(e.device_names, e.device_memory_gb))
            self._line(f"Device: CUDA | {gpus}")
        else:
            self._line(f"Device: CPU | {e.device_names[0]} | {e.threads} threads")
        self._line(f"Disk: {e.disk_free_gb:.1f} GB free, about {e.disk_needed_gb:.1f} GB needed")
        if e.warning:
            self._line(f"WARNING: {e.warning}")

    def _on_StageStarted(self, e: ev.StageStarted) -> None:
        self._merge_header = self._count_header = False
        self._line(f"== Stage {e.index}/{e.total}: {e.stage}")

    def _on_StageFinished(self, e: ev.StageFinished) -> None:
        if e.stage == "tokenizer" and not e.reused:
            self._line("Training Complete!")
            for key, label in (("vocab_size", "Final vocab size"), ("merges", "Total merges"),
                               ("unique_words", "Unique words"), ("alphabet", "Alphabet size")):
                if key in e.info:
                    self._line(f"  {label}: {e.info[key]:,}")
            self._line(f"  Total time: {e.seconds:.1f}s")
        details = " | ".join(f"{k}: {_fmt_info(v)}" for k, v in e.info.items())
        state = "reused" if e.reused else "done"
        line = f"   {e.stage} {state} in {_fmt_seconds(e.seconds)}"
        self._line(line + (f" | {details}" if details else ""))

    def _on_Notice(self, e: ev.Notice) -> None:
        self._line(("WARNING: " if e.level == "warning" else "  ") + e.text)

    def _on_RunPaused(self, e: ev.RunPaused) -> None:
        self._line(f"Paused ({e.stage})")

    def _on_RunResumed(self, e: ev.RunResumed) -> None:
        self._line(f"Resumed ({e.stage}) after {_fmt_seconds(e.paused_seconds)} paused in total")

    def _on_RunFailed(self, e: ev.RunFailed) -> None:
        for detail in e.details:
            self._line(f"  | {detail}")
        self._line(f"FAILED in stage {e.stage or '-'}: {e.message}")

    def _on_RunFinished(self, e: ev.RunFinished) -> None:
        self._line(f"Run {e.status} in {_fmt_seconds(e.seconds)}")

    # --- data and encode ---

    def _on_DataProgress(self, e: ev.DataProgress) -> None:
        of = f"/{e.total:,}" if e.total else ""
        self._progress([(0, f"  Reading {e.split}: {e.pairs:,}{of} pairs"),
                        (1, f"{e.per_second:,.0f} pairs/s"),
                        (2, f"Elapsed: {_fmt_seconds(e.elapsed)}")], e.final)

    def _on_DownloadProgress(self, e: ev.DownloadProgress) -> None:
        if e.unit == "B":
            done, total = _fmt_size(int(e.done)), _fmt_size(int(e.total))
            speed = f"{_fmt_size(int(e.per_second))}/s"
        else:
            done, total = f"{e.done:,.0f}", f"{e.total:,.0f}"
            speed = f"{e.per_second:,.0f} {e.unit}/s"
        fields = [(0, f"  {e.what}: {done}" + (f"/{total}" if e.total else "")), (2, speed)]
        if e.eta and not e.final:
            fields.append((1, f"ETA: {_fmt_seconds(e.eta)}"))
        self._progress(fields, e.final)

    def _on_EncodeProgress(self, e: ev.EncodeProgress) -> None:
        final = e.done >= e.total
        pct = 100.0 * e.done / e.total if e.total else 100.0
        self._progress([(0, f"  Encoding {e.split}: {e.done:,}/{e.total:,} pairs ({pct:.1f}%)"),
                        (2, f"{e.per_second:,.0f} pairs/s"),
                        (1, f"ETA: {_fmt_seconds(e.eta)}")], final)

    # --- tokenizer ---
    # Two phases, unnumbered. The trainer has four (read the files and count words, tokenize
    # words, count pairs, compute merges), but in its JSON progress the middle two are one line
    # at their start and one at their end, seconds apart, and reach no event: a "[Step 1/4]"
    # followed by "[Step 4/4]" read as two steps lost.

    def _on_WordCountProgress(self, e: ev.WordCountProgress) -> None:
        if not self._count_header:
            self._count_header = True
            self._line("Computing word frequencies...")
        final = e.done >= e.total
        pct = 100.0 * e.done / e.total if e.total else 100.0
        tail = "Done!" if final else f"{e.per_second:,.0f} sentences/s"
        self._progress([(0, f"  Progress: {e.done:,}/{e.total:,} ({pct:.1f}%)"),
                        (2, f"Elapsed: {e.elapsed:.1f}s"), (1, tail)], final)

    def _on_MergeProgress(self, e: ev.MergeProgress) -> None:
        if not self._merge_header:
            self._merge_header = True
            lang = f" ({e.language})" if e.language else ""
            self._line(f"Performing BPE merges{lang}...")
        final = e.merges >= e.target_merges
        pct = 100.0 * e.merges / e.target_merges if e.target_merges else 100.0
        per_second = e.per_second if e.per_second > 0 or e.elapsed <= 0 else e.merges / e.elapsed
        self._progress([(0, f"  Merges: {e.merges:,}/{e.target_merges:,} ({pct:.1f}%)"),
                        (3, f"Vocab: {e.vocab_size:,}/{e.target_vocab:,}"),
                        (2, f"Speed: {per_second:,.0f} merges/s"), (1, f"ETA: {e.eta:.1f}s")],
                       final)
        if final:
            self._merge_header = self._count_header = False

    # --- training ---

    def _on_BatchProgress(self, e: ev.BatchProgress) -> None:
        final = e.batch >= e.batches or 0 < e.max_updates <= e.step
        pct = 100.0 * e.batch / e.batches if e.batches else 100.0
        fields = [(0, f"  Epoch {e.epoch}/{e.epochs}"),
                  (0, f"Batch {e.batch:,}/{e.batches:,} ({pct:.1f}%)"),
                  (1, f"Loss: {e.loss:.4f} (avg: {e.avg_loss:.4f})"), (4, f"LR: {e.lr:.6f}"),
                  (3, f"Speed: {e.batches_per_second:.1f} batch/s, "
                      f"{e.tokens_per_second:,.0f} tok/s")]
        if e.max_updates:  # a run measured in updates: that count first
            fields.insert(0, (0, f"  Update {e.step:,}/{e.max_updates:,}"))
            fields[1] = (0, f"Epoch {e.epoch}/{e.epochs}")
        if e.gnorm is not None:
            fields.append((5, f"gnorm: {e.gnorm:.3g}"))
        if e.loss_scale is not None:
            fields.append((6, f"scale: {e.loss_scale:g}"))
        fields.append((2, f"ETA: {_fmt_seconds(e.eta)}"))
        if e.run_eta is not None and e.run_eta > e.eta:  # more epochs to come
            fields.append((2, f"run ETA: {_fmt_seconds(e.run_eta)}"))
        self._progress(fields, final)

    def _on_SampleTranslations(self, e: ev.SampleTranslations) -> None:
        for number, sample in enumerate(e.samples, 1):
            self._line(f"    Sample {number} | src: {sample['source']}")
            self._line(f"             | ref: {sample['reference']}")
            self._line(f"             | hyp: {sample['hypothesis']}")

    def _on_TestBleu(self, e: ev.TestBleu) -> None:
        which = {"averaged": " of the averaged model", "best": " of the best-validated checkpoint",
                 "last": " of the last weights"}.get(e.role, "")
        self._line(f"  Test BLEU{which} ({e.sentences:,} sentences, {e.checkpoint}, beam {e.beam}, "
                   f"alpha {e.length_penalty}):")
        if e.averaged_from:
            self._line(f"    averaged from: {', '.join(e.averaged_from)}")
        self._line(f"    sacreBLEU:  {e.sacrebleu:.2f}  ({e.sacrebleu_signature})")
        if e.lowercase_bleu is not None:
            self._line(f"    lowercased: {e.lowercase_bleu:.2f}  ({e.lowercase_signature}; as the "
                       "Multi30k literature reports)")
        self._line(f"    paper BLEU: {e.paper_bleu:.2f}  ({e.paper_signature}; tokenized, "
                   "compound-split, as the paper's 27.3)")

    def _on_EpochSummary(self, e: ev.EpochSummary) -> None:
        self._line(f"  Epoch {e.epoch}/{e.epochs} Summary:")
        self._line(f"    Train Loss: {e.train_loss:.4f} | Train PPL: {e.train_ppl:.2f}")
        self._line(f"    Val Loss:   {e.val_loss:.4f} | Val PPL:   {e.val_ppl:.2f}")
        if e.bleu is not None:
            self._line(f"    Val BLEU:   {e.bleu:.2f}")
        self._line(f"    Time: {_fmt_seconds(e.epoch_seconds)} (total {_fmt_seconds(e.total_seconds)})")

    def _on_CheckpointSaved(self, e: ev.CheckpointSaved) -> None:
        self._line(f"  Checkpoint saved: {e.path} ({_fmt_size(e.size_bytes)})")

    def _on_BatchSkipped(self, e: ev.BatchSkipped) -> None:
        what = "out of memory" if e.reason == "oom" else "non-finite loss"
        self._line(f"WARNING: skipped batch {e.batch} of epoch {e.epoch} ({what}, {e.tokens:,} tokens; "
                   f"{e.in_a_row} in a row)")


def fit(fields: list[Field], width: int | None) -> str:
    """The fields joined by " | ", leaving out the least needed until the line fits ``width``
    (None: all); a line still too long is cut with "…"."""
    kept = list(fields)
    while width is not None and len(" | ".join(text for _, text in kept)) > width and len(kept) > 1:
        kept.remove(max(kept, key=lambda field: field[0]))
    line = " | ".join(text for _, text in kept)
    if width is not None and len(line) > width:
        line = line[:max(width - 1, 0)] + "…"
    return line


def _fmt_info(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)
