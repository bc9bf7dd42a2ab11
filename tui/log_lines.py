"""The Log panel's lines for an event: what the headless printer says, one line or a few, from
the event alone (the lines that depend on the run's state are the dashboard state's own)."""

from __future__ import annotations

from typing import Any

from engine import events as ev
from engine.versions import versions_text
from tui.format import duration


def log_lines(e: ev.Event) -> list[str]:
    """The event's lines for the log; [] for progress events (the panels show those)."""
    handler = _LINES.get(type(e))
    return handler(e) if handler is not None else []


def _preflight(e: ev.Preflight) -> list[str]:
    memory = ", ".join(f"{gb:g} GB" for gb in e.device_memory_gb)
    lines = [f"device {e.device}: {', '.join(e.device_names)}"
             + (f" ({memory})" if memory else "") + f", {e.threads} threads, "
             f"disk {e.disk_free_gb:g} GB free"]
    return lines + ([f"warning: {e.warning}"] if e.warning else [])


def _stage_finished(e: ev.StageFinished) -> list[str]:
    how = "reused" if e.reused else f"done in {duration(e.seconds)}"
    details = ", ".join(f"{k} {short(v)}" for k, v in e.info.items())
    return [f"stage {e.stage} {how}" + (f": {details}" if details else "")]


def _epoch(e: ev.EpochSummary) -> list[str]:
    bleu = f" | BLEU {e.bleu:.2f}" if e.bleu is not None else ""
    return [f"epoch {e.epoch}/{e.epochs}: train loss {e.train_loss:.4f} (ppl {e.train_ppl:.2f}) "
            f"| val loss {e.val_loss:.4f} (ppl {e.val_ppl:.2f}){bleu} | {duration(e.epoch_seconds)}"]


def _samples(e: ev.SampleTranslations) -> list[str]:
    """The validation's sample translations, as the headless printer shows them."""
    lines = [f"samples after epoch {e.epoch} (step {e.step:,}):"]
    for number, sample in enumerate(e.samples, 1):
        lines += [f"  {number} src: {sample.get('source', '')}",
                  f"    ref: {sample.get('reference', '')}",
                  f"    hyp: {sample.get('hypothesis', '')}"]
    return lines


def _test_bleu(e: ev.TestBleu) -> list[str]:
    which = {"averaged": "the averaged model", "best": "the best-validated checkpoint",
             "last": "the last weights"}.get(e.role, e.checkpoint.rsplit("/", 1)[-1])
    made_of = f" (the mean of {', '.join(e.averaged_from)})" if e.averaged_from else ""
    lowercased = (f", {e.lowercase_bleu:.2f} lowercased" if e.lowercase_bleu is not None
                  else "")
    return [f"test BLEU of {which}{made_of}: {e.sacrebleu:.2f} sacreBLEU{lowercased}, "
            f"{e.paper_bleu:.2f} the paper's way, {e.sentences:,} sentences"]


def _download(e: ev.DownloadProgress) -> list[str]:
    return [f"{e.what}: done ({short(e.done)} {e.unit} in {duration(e.elapsed)})"] if e.final else []


_LINES: dict[type, Any] = {
    ev.RunStarted: lambda e: [f"run started: preset {e.preset}, run dir {e.run_dir}"]
    + ([f"ran with {versions_text(e.versions)}"] if e.versions else []),
    ev.Preflight: _preflight,
    ev.StageStarted: lambda e: [f"stage {e.index}/{e.total} {e.stage} started"],
    ev.StageFinished: _stage_finished,
    ev.Notice: lambda e: [("warning: " if e.level == "warning" else "") + e.text],
    ev.RunPaused: lambda e: [f"paused ({e.stage or 'between stages'})"],
    ev.RunResumed: lambda e: [f"resumed after {duration(e.paused_seconds)} paused in all"],
    ev.RunFailed: lambda e: [f"failed in stage {e.stage or '-'}: {e.message}"]
    + [f"  {line}" for line in e.details],
    ev.DownloadProgress: _download,
    ev.EpochSummary: _epoch,
    ev.SampleTranslations: _samples,
    ev.TestBleu: _test_bleu,
    ev.CheckpointSaved: lambda e: [f"saved {e.name} (epoch {e.epoch}, step {e.step:,})"],
    ev.BatchSkipped: lambda e: [f"warning: batch {e.batch} of epoch {e.epoch} skipped "
                                f"({e.reason}, {e.tokens} tokens, {e.in_a_row} in a row)"],
}


def short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
