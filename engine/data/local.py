"""Local parallel files: one sentence a line, UTF-8, optionally gzip-compressed."""

from __future__ import annotations

import gzip
import itertools
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from engine.data.corpus import Corpus, LoadReport, Pair, first_line, first_pairs, split_sizes
from engine.errors import DataError

if TYPE_CHECKING:
    from engine.config import DataConfig

BLOCK = 1 << 22  # bytes read at a time: files are streamed, never read whole


def iter_lines(path: Path | str) -> Iterator[str]:
    """The lines of a UTF-8 text file (gzip-compressed when its name ends in .gz), unstripped,
    read a block at a time.

    Only a newline ends a line (a carriage return before it is dropped): other Unicode line
    breaks inside a sentence must not shift the alignment of two files.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            before = 0  # lines in the blocks already yielded
            rest = b""
            while True:
                block = f.read(BLOCK)
                if not block:
                    break
                block = rest + block
                cut = block.rfind(b"\n") + 1
                rest = block[cut:]
                if cut:
                    lines = _decode(path, block[:cut], before).split("\n")
                    lines.pop()  # the block ends with its last newline
                    yield from _without_cr(lines, first=before == 0)
                    before += len(lines)
            if rest:
                yield from _without_cr([_decode(path, rest, before)], first=before == 0)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip file ({first_line(exc)}); "
                        "give a valid .gz or the uncompressed file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or first_line(exc)}") from None


def _decode(path: Path, data: bytes, lines_before: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = lines_before + data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}: line {line}: not valid UTF-8 (byte 0x{data[exc.start]:02x}); "
                        "files must be UTF-8 text") from None


def _without_cr(lines: list[str], first: bool) -> list[str]:
    if first and lines and lines[0].startswith("\ufeff"):  # a byte order mark is no sentence
        lines[0] = lines[0][1:]
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_lines(path: Path | str) -> list[str]:
    """All the lines of a file, as ``iter_lines`` reads them."""
    return list(iter_lines(path))


def iter_parallel(src_path: Path | str, tgt_path: Path | str, split: str = "train",
                  blank: list[int] | None = None) -> Iterator[Pair]:
    """Aligned, stripped pairs of two files, one sentence a line, streamed.

    A line blank on both sides is dropped and counted in ``blank[0]``; blank on one side only
    means the files are misaligned, which is an error naming the file and line. The errors that
    need the whole file (empty, unequal line counts) come when one file ends.
    """
    src_path, tgt_path = Path(src_path), Path(tgt_path)
    paths = (src_path, tgt_path)
    lines = (iter_lines(src_path), iter_lines(tgt_path))
    has_text = [False, False]
    number = 0
    for number, (s, t) in enumerate(itertools.zip_longest(*lines), start=1):
        if s is None or t is None:  # one file ended: count the rest of the other
            longer = 0 if t is None else 1
            counts = [number - 1, number - 1]
            counts[longer] += 1
            has_text[longer] = has_text[longer] or bool((s if t is None else t).strip())
            for line in lines[longer]:
                counts[longer] += 1
                has_text[longer] = has_text[longer] or bool(line.strip())
            _check_not_empty(paths, has_text, split)
            raise DataError(f"{split}: {src_path} has {counts[0]:,} lines but {tgt_path} has "
                            f"{counts[1]:,}; the two files must be aligned line by line")
        s, t = s.strip(), t.strip()
        if s and t:
            has_text[0] = has_text[1] = True
            yield s, t
        elif s or t:
            side = 1 if s else 0  # the blank one
            if not has_text[side]:  # maybe the whole file is blank: that is the error to give
                has_text[side] = any(line.strip() for line in lines[side])
                _check_not_empty(paths, has_text, split)
            blank_path, other = paths[side], paths[1 - side]
            raise DataError(f"{blank_path}: line {number} is blank but line {number} of {other} "
                            "is not; the files are misaligned (remove or fill the line in both)")
        elif blank is not None:
            blank[0] += 1
    _check_not_empty(paths, has_text, split)


def _check_not_empty(paths: tuple[Path, Path], has_text: list[bool], split: str) -> None:
    for path, text in zip(paths, has_text):
        if not text:
            raise DataError(f"{path}: file is empty ({split} needs one sentence a line)")


def read_parallel(src_path: Path | str, tgt_path: Path | str,
                  split: str = "train") -> tuple[list[Pair], int]:
    """All the pairs of two files and the number of blank pairs dropped (see iter_parallel)."""
    blank = [0]
    pairs = list(iter_parallel(src_path, tgt_path, split, blank))
    return pairs, blank[0]


def local_splits(cfg: "DataConfig", report: LoadReport) -> dict[str, Iterator[Pair] | None]:
    """Each split's pairs, streamed from its files (None: no test files). Blank pairs dropped
    are counted in ``report`` as each split is read to its end."""
    files = {"train": (cfg.train_src, cfg.train_tgt), "valid": (cfg.valid_src, cfg.valid_tgt),
             "test": (cfg.test_src, cfg.test_tgt)}
    for split, (src, tgt) in files.items():
        if not src and not tgt and split == "test":
            continue
        for key, value in ((f"{split}_src", src), (f"{split}_tgt", tgt)):
            if not value:
                raise DataError(f"[data] {key} is required when source = \"local\"")
    return {split: (_counted(split, src, tgt, report) if src or tgt else None)
            for split, (src, tgt) in files.items()}


def _counted(split: str, src: str, tgt: str, report: LoadReport) -> Iterator[Pair]:
    blank = [0]
    try:  # the blank pairs among the lines read, also when reading stops at train_size
        yield from iter_parallel(Path(src).expanduser(), Path(tgt).expanduser(), split, blank)
    finally:
        if blank[0]:
            report.dropped_blank[split] = blank[0]


def load_local(cfg: "DataConfig", report: LoadReport | None = None) -> Corpus:
    """Train and valid files are required, test files optional (an empty test split)."""
    report = report if report is not None else LoadReport()
    sizes = split_sizes(cfg)
    where = {"train": f"{cfg.train_src} / {cfg.train_tgt}",
             "valid": f"{cfg.valid_src} / {cfg.valid_tgt}",
             "test": f"{cfg.test_src} / {cfg.test_tgt}"}
    splits = {split: first_pairs(pairs or [], sizes[split], split, where[split], report)
              for split, pairs in local_splits(cfg, report).items()}
    return Corpus(splits["train"], splits["valid"], splits["test"],
                  src_lang=cfg.src_lang, tgt_lang=cfg.tgt_lang)
