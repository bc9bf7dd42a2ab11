"""What every data source yields: a ``Corpus`` of train, valid and test (source, target) pairs,
and the helpers the sources share (sizes, direction, one-line errors)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.errors import DataError

if TYPE_CHECKING:
    from engine.config import DataConfig

Pair = tuple[str, str]


@dataclass
class Corpus:
    train: list[Pair]
    valid: list[Pair]
    test: list[Pair]
    src_lang: str = "en"
    tgt_lang: str = "de"
    _fingerprint: str = field(default="", repr=False, compare=False)

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "valid": len(self.valid), "test": len(self.test)}

    def fingerprint(self) -> str:
        """sha256 of every pair of every split: what caches keyed on the data compare."""
        if not self._fingerprint:
            digest = hashlib.sha256(f"{self.src_lang}-{self.tgt_lang}".encode())
            for name in ("train", "valid", "test"):
                digest.update(f"\n#{name}\n".encode())
                for src, tgt in getattr(self, name):
                    digest.update(src.encode("utf-8", "surrogatepass") + b"\t"
                                  + tgt.encode("utf-8", "surrogatepass") + b"\n")
            self._fingerprint = digest.hexdigest()
        return self._fingerprint


@dataclass
class LoadReport:
    """What loading found beside the pairs, for the stage's info and notices."""

    dropped_blank: dict[str, int] = field(default_factory=dict)  # split -> blank pairs dropped
    notes: list[str] = field(default_factory=list)  # one line each, worth telling the user



def split_sizes(cfg: "DataConfig") -> dict[str, int]:
    return {"train": cfg.train_size, "valid": cfg.valid_size, "test": cfg.test_size}


def needs_swap(cfg: "DataConfig", corpus_langs: tuple[str, str] = ("en", "de")) -> bool:
    """True when pairs stored as ``corpus_langs`` must be swapped for src_lang->tgt_lang."""
    if {cfg.src_lang, cfg.tgt_lang} != set(corpus_langs):
        raise DataError(f"[data] source = {cfg.source!r} has {corpus_langs[0]} and "
                        f"{corpus_langs[1]} only, not {cfg.src_lang}-{cfg.tgt_lang}")
    return cfg.src_lang == corpus_langs[1]


def swapped(pairs: list[Pair]) -> list[Pair]:
    return [(tgt, src) for src, tgt in pairs]


def first_pairs(pairs: list[Pair], size: int, split: str, where: str,
                report: LoadReport) -> list[Pair]:
    if size and size > len(pairs):
        report.notes.append(f"{split}_size = {size:,} but {where} has {len(pairs):,} pairs: "
                            f"using all {len(pairs):,}")
    return pairs[:size] if size else pairs


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]

