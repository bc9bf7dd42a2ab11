"""Local parallel files: one sentence a line, UTF-8, optionally gzip-compressed."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from engine.data.corpus import Corpus, LoadReport, Pair, first_line, first_pairs, split_sizes
from engine.errors import DataError

if TYPE_CHECKING:
    from engine.config import DataConfig

def read_lines(path: Path | str) -> list[str]:
    """The lines of a UTF-8 text file (gzip-compressed when its name ends in .gz), unstripped.

    Only a newline ends a line (a carriage return before it is dropped): other Unicode line
    breaks inside a sentence must not shift the alignment of two files.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip file ({first_line(exc)}); "
                        "give a valid .gz or the uncompressed file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or first_line(exc)}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}: line {line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x}); "
                        "files must be UTF-8 text") from None
    if text.startswith("\ufeff"):  # a byte order mark is not part of the first sentence
        text = text[1:]
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_parallel(src_path: Path | str, tgt_path: Path | str,
                  split: str = "train") -> tuple[list[Pair], int]:
    """Aligned pairs of two files, one sentence a line; returns (pairs, blank pairs dropped).

    A line blank on both sides is dropped and counted; blank on one side only means the files
    are misaligned, which is an error naming the file and line.
    """
    src_path, tgt_path = Path(src_path), Path(tgt_path)
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    for path, lines in ((src_path, src), (tgt_path, tgt)):
        if not any(line.strip() for line in lines):
            raise DataError(f"{path}: file is empty ({split} needs one sentence a line)")
    if len(src) != len(tgt):
        raise DataError(f"{split}: {src_path} has {len(src):,} lines but {tgt_path} has "
                        f"{len(tgt):,}; the two files must be aligned line by line")
    pairs: list[Pair] = []
    dropped = 0
    for number, (s, t) in enumerate(zip(src, tgt), start=1):
        s, t = s.strip(), t.strip()
        if s and t:
            pairs.append((s, t))
        elif s or t:
            blank, other = (tgt_path, src_path) if s else (src_path, tgt_path)
            raise DataError(f"{blank}: line {number} is blank but line {number} of {other} is "
                            "not; the files are misaligned (remove or fill the line in both)")
        else:
            dropped += 1
    return pairs, dropped


def load_local(cfg: "DataConfig", report: LoadReport | None = None) -> Corpus:
    """Train and valid files are required, test files optional (an empty test split)."""
    report = report if report is not None else LoadReport()
    files = {"train": (cfg.train_src, cfg.train_tgt), "valid": (cfg.valid_src, cfg.valid_tgt),
             "test": (cfg.test_src, cfg.test_tgt)}
    sizes = split_sizes(cfg)
    splits: dict[str, list[Pair]] = {}
    for split, (src, tgt) in files.items():
        if not src and not tgt and split == "test":
            splits[split] = []
            continue
        for key, value in ((f"{split}_src", src), (f"{split}_tgt", tgt)):
            if not value:
                raise DataError(f"[data] {key} is required when source = \"local\"")
        pairs, dropped = read_parallel(Path(src).expanduser(), Path(tgt).expanduser(), split)
        if dropped:
            report.dropped_blank[split] = dropped
        splits[split] = first_pairs(pairs, sizes[split], split, f"{src} / {tgt}", report)
    return Corpus(splits["train"], splits["valid"], splits["test"],
                  src_lang=cfg.src_lang, tgt_lang=cfg.tgt_lang)

