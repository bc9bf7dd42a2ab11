"""The data stage: load the corpus ``[data] source`` names and report what loading found.

In a run the training pairs are streamed into two text files in the run directory
(``corpus/train.src.txt``, ``corpus/train.tgt.txt``) as they are read: the tokenizer trains from
those files and the encoder reads them, so a WMT14-size corpus never sits in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from engine.data.corpus import (
    Corpus,
    LoadReport,
    Pair,
    Pairs,
    split_sizes,
    take_pairs,
    write_pair_files,
)
from engine.data.local import local_splits
from engine.data.sample import load_sample
from engine.data.wmt14 import WMT14_SPLITS, wmt14_splits
from engine.errors import DataError
from engine.events import DataProgress, Emit, Notice
from engine.progress import ProgressClock
from engine.stages import StageResult

if TYPE_CHECKING:
    from engine.config import DataConfig

SPLITS = ("train", "valid", "test")
CORPUS_DIR = "corpus"  # in the run directory: the training pairs as text files


def load_corpus(cfg: "DataConfig", report: LoadReport | None = None,
                train_dir: Path | None = None, emit: Emit | None = None,
                write_train: bool = True) -> Corpus:
    """The corpus ``cfg`` describes: source, sizes (0 = all) and direction src_lang->tgt_lang.

    ``train_dir``: write the training pairs there as they are read (Corpus.train is then a
    PairFiles); without it every split is a list in memory. ``write_train=False``: another
    process of a torchrun job has written those files; read, count and hash, write nothing.
    ``emit`` receives progress events.
    Raises ``DataError`` with one line naming the file (and line) for anything unusable.
    """
    report = report if report is not None else LoadReport()
    sizes = split_sizes(cfg)
    if cfg.source == "sample":
        sample = load_sample(cfg)  # generated at the sizes asked for
        splits: dict[str, Iterable[Pair] | None] = {name: getattr(sample, name) for name in SPLITS}
        sizes = dict.fromkeys(SPLITS, 0)
        where = dict.fromkeys(SPLITS, "the sample")
    elif cfg.source == "local":
        splits = dict(local_splits(cfg, report))
        where = {name: f"{getattr(cfg, name + '_src')} / {getattr(cfg, name + '_tgt')}"
                 for name in SPLITS}
    elif cfg.source == "wmt14":
        splits = dict(wmt14_splits(cfg, report=report, emit=emit))
        where = {name: f"WMT14 {WMT14_SPLITS[name]}" for name in SPLITS}
    else:
        raise DataError(f"[data] source = {cfg.source!r}: must be one of sample, wmt14, local")
    loaded: dict[str, Pairs] = {}
    for name in SPLITS:
        source = splits[name]
        if source is None:
            loaded[name] = []
            continue
        pairs = _progress(take_pairs(source, sizes[name], name, where[name], report), name,
                          sizes[name], emit)
        try:
            if name == "train" and train_dir is not None:
                loaded[name] = write_pair_files(pairs, train_dir, cfg.src_lang, cfg.tgt_lang,
                                                write=write_train)
            else:
                loaded[name] = list(pairs)
        finally:
            if isinstance(source, Iterator) and hasattr(source, "close"):
                source.close()  # a reader stopped at train_size counts what it read
    if not loaded["train"]:
        raise DataError(f"[data] source = {cfg.source!r}: the training split is empty")
    return Corpus(loaded["train"], loaded["valid"], loaded["test"],
                  src_lang=cfg.src_lang, tgt_lang=cfg.tgt_lang)


def _progress(pairs: Iterable[Pair], split: str, total: int,
              emit: Emit | None) -> Iterator[Pair]:
    """The pairs, passed on; a DataProgress a few times a second and at the end."""
    if emit is None:
        yield from pairs
        return
    clock = ProgressClock()
    count = 0
    for count, pair in enumerate(pairs, start=1):
        if count & 1023 == 0 and clock.due():
            emit(DataProgress(split=split, pairs=count, total=total,
                              per_second=clock.rate(count), elapsed=round(clock.elapsed(), 3)))
        yield pair
    emit(DataProgress(split=split, pairs=count, total=total, per_second=clock.rate(count),
                      elapsed=round(clock.elapsed(), 3), final=True))


def run_data_stage(cfg: "DataConfig", emit: Emit, run_dir: Path | None = None,
                   write_train: bool = True) -> StageResult[Corpus]:
    """First stage: load the corpus the config names (training pairs into ``run_dir``'s
    corpus/ files when a run directory is given, unless another rank wrote them:
    ``write_train``)."""
    if cfg.source == "wmt14":
        emit(Notice(text="Loading WMT14 English-German through datasets "
                         "(the first run downloads it)"))
    report = LoadReport()
    train_dir = Path(run_dir) / CORPUS_DIR if run_dir is not None else None
    corpus = load_corpus(cfg, report, train_dir=train_dir, emit=emit, write_train=write_train)
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
