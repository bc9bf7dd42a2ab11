"""The data stage: load the corpus ``[data] source`` names and report what loading found."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.data.corpus import Corpus, LoadReport
from engine.data.local import load_local
from engine.data.sample import load_sample
from engine.data.wmt14 import load_wmt14
from engine.errors import DataError
from engine.events import Emit, Notice
from engine.stages import StageResult

if TYPE_CHECKING:
    from engine.config import DataConfig


def load_corpus(cfg: "DataConfig", report: LoadReport | None = None) -> Corpus:
    """The corpus ``cfg`` describes: source, sizes (0 = all) and direction src_lang->tgt_lang.

    Raises ``DataError`` with one line naming the file (and line) for anything unusable.
    """
    report = report if report is not None else LoadReport()
    if cfg.source == "sample":
        corpus = load_sample(cfg)
    elif cfg.source == "local":
        corpus = load_local(cfg, report)
    elif cfg.source == "wmt14":
        corpus = load_wmt14(cfg, report=report)
    else:
        raise DataError(f"[data] source = {cfg.source!r}: must be one of sample, wmt14, local")
    if not corpus.train:
        raise DataError(f"[data] source = {cfg.source!r}: the training split is empty")
    return corpus


def run_data_stage(cfg: "DataConfig", emit: Emit) -> StageResult[Corpus]:
    """First stage: load the corpus the config names."""
    if cfg.source == "wmt14":
        emit(Notice(text="Loading WMT14 English-German through datasets "
                         "(the first run downloads it)"))
    report = LoadReport()
    corpus = load_corpus(cfg, report)
    dropped = sum(report.dropped_blank.values())
    if dropped:
        per_split = ", ".join(f"{split} {n:,}" for split, n in report.dropped_blank.items())
        emit(Notice(text=f"Dropped {dropped:,} blank line pairs ({per_split})"))
    for note in report.notes:
        emit(Notice(text=note, level="warning"))
    info: dict[str, Any] = {**corpus.counts(), "source": cfg.source,
                            "direction": f"{corpus.src_lang}->{corpus.tgt_lang}",
                            "dropped_blank": dropped}
    if cfg.source == "sample":
        info["seed"] = cfg.seed
    return StageResult(output=corpus, info=info)
