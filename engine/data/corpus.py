"""What every data source yields: a ``Corpus`` of train, valid and test (source, target) pairs,
and the helpers the sources share (sizes, direction, one-line errors)."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence, Union

from engine import atomic
from engine.errors import DataError

if TYPE_CHECKING:
    from engine.config import DataConfig

Pair = tuple[str, str]
WRITE_CHUNK = 10_000  # pairs per write (and per hash update) while writing PairFiles


class PairFiles:
    """A split as two aligned UTF-8 text files, one sentence a line, written once by a
    ``PairWriter``: the tokenizer trains from the files and the encoder reads them in chunks, so
    a WMT14-size training split never sits in memory as Python strings.

    Holds what the writer learnt on the way: the pair count, each side's characters (the
    tokenizer's alphabet check) and the hash of the pairs (the corpus fingerprint).
    """

    def __init__(self, src: Path, tgt: Path, count: int, chars: tuple[frozenset, frozenset],
                 digest: Any) -> None:
        self.src, self.tgt, self.count = Path(src), Path(tgt), count
        self.chars = chars  # (source characters, target characters)
        self.digest = digest  # hashlib state after every pair, as Corpus.fingerprint hashes them

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Pair]:
        for sources, targets in self.chunks(WRITE_CHUNK):
            yield from zip(sources, targets)

    def chunks(self, size: int) -> Iterator[tuple[list[str], list[str]]]:
        """(source sentences, target sentences) of up to ``size`` pairs at a time, in order."""
        with open(self.src, "rb") as src, open(self.tgt, "rb") as tgt:
            while True:
                sources, targets = _read_lines(src, size), _read_lines(tgt, size)
                if len(sources) != len(targets):
                    raise DataError(f"{self.src} / {self.tgt}: the files changed while being "
                                    "read (lines no longer aligned); run again")
                if not sources:
                    return
                yield sources, targets


def _read_lines(stream: Any, count: int) -> list[str]:
    """The next ``count`` lines of a file that a PairWriter wrote (each ends with a newline)."""
    block = b"".join(itertools.islice(stream, count))
    return block.decode("utf-8", "surrogatepass")[:-1].split("\n") if block else []


class PairWriter:
    """Writes pairs to a PairFiles as they are read (temporary files, renamed by ``close``).

    A sentence with a line break inside (possible in a dataset, never in a local file) has it
    replaced by a space: one sentence must stay one line.
    """

    def __init__(self, directory: Path, src_lang: str, tgt_lang: str, split: str = "train",
                 write: bool = True) -> None:
        directory = Path(directory)
        self.paths = (directory / f"{split}.src.txt", directory / f"{split}.tgt.txt")
        # write=False: another process (torchrun's rank 0) wrote these files from the same
        # source; count and hash only, and the fingerprint check across ranks vouches for them
        self.write = write
        self.temps = [atomic.temporary_name(path) for path in self.paths] if write else []
        if write:
            directory.mkdir(parents=True, exist_ok=True)
        self.files = [open(temp, "wb") for temp in self.temps]
        self.digest = hashlib.sha256(f"{src_lang}-{tgt_lang}".encode())
        self.digest.update(f"\n#{split}\n".encode())
        self.count = 0
        self.pending: list[Pair] = []
        self.chars: tuple[set[str], set[str]] = (set(), set())
        self.seen_ascii = [b"", b""]  # ASCII bytes already in chars, per side

    def add(self, pairs: Iterable[Pair]) -> None:
        for pair in pairs:
            self.pending.append(pair)
            if len(self.pending) >= WRITE_CHUNK:
                self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        pairs = self.pending
        if any("\n" in src or "\n" in tgt for src, tgt in pairs):
            pairs = [(src.replace("\n", " "), tgt.replace("\n", " ")) for src, tgt in pairs]
        self.digest.update("".join([f"{src}\t{tgt}\n" for src, tgt in pairs])
                           .encode("utf-8", "surrogatepass"))
        for side in (0, 1):
            data = ("\n".join([pair[side] for pair in pairs]) + "\n").encode("utf-8",
                                                                              "surrogatepass")
            self.collect_chars(side, data)
            if self.write:
                with self.naming_errors(side):
                    self.files[side].write(data)
        self.count += len(pairs)
        self.pending = []

    def collect_chars(self, side: int, data: bytes) -> None:
        """bytes.translate drops the ASCII characters already seen, in C; what remains (new
        ASCII, and the rarer non-ASCII bytes) is decoded and added: about 5x cheaper than
        adding every character to a set."""
        rest = data.translate(None, self.seen_ascii[side])
        if rest:
            self.chars[side].update(rest.decode("utf-8", "replace"))
            self.seen_ascii[side] = bytes(sorted(ord(c) for c in self.chars[side] if ord(c) < 128))

    @contextlib.contextmanager
    def naming_errors(self, side: int) -> Iterator[None]:
        """A buffered write's OSError (a full disk) carries no file name: give it ours."""
        try:
            yield
        except OSError as exc:
            if exc.filename is not None:
                raise
            raise OSError(exc.errno, exc.strerror, str(self.paths[side])) from exc

    def close(self) -> PairFiles:
        self.flush()
        for side, file in enumerate(self.files):
            with self.naming_errors(side):
                file.close()
        for temp, path in zip(self.temps, self.paths):
            os.replace(temp, path)
        chars = (frozenset(self.chars[0] - {"\n"}), frozenset(self.chars[1] - {"\n"}))
        return PairFiles(self.paths[0], self.paths[1], self.count, chars, self.digest)

    def discard(self) -> None:
        for file, temp in zip(self.files, self.temps):
            file.close()
            temp.unlink(missing_ok=True)


def write_pair_files(pairs: Iterable[Pair], directory: Path, src_lang: str, tgt_lang: str,
                     split: str = "train", write: bool = True) -> PairFiles:
    writer = PairWriter(directory, src_lang, tgt_lang, split, write)
    try:
        writer.add(pairs)
        return writer.close()
    except BaseException:
        writer.discard()
        raise


Pairs = Union[Sequence[Pair], PairFiles]


@dataclass
class Corpus:
    train: Pairs  # a list in memory, or PairFiles (the data stage of a run writes them)
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
            if isinstance(self.train, PairFiles):  # the writer hashed the train split
                digest, names = self.train.digest.copy(), ("valid", "test")
            else:
                digest = hashlib.sha256(f"{self.src_lang}-{self.tgt_lang}".encode())
                names = ("train", "valid", "test")
            for name in names:
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


def first_pairs(pairs: Iterable[Pair], size: int, split: str, where: str,
                report: LoadReport) -> list[Pair]:
    return list(take_pairs(pairs, size, split, where, report))


def take_pairs(pairs: Iterable[Pair], size: int, split: str, where: str,
               report: LoadReport) -> Iterator[Pair]:
    """The first ``size`` pairs (0 = all); reading stops there. Says so when there are fewer."""
    count = 0
    for pair in itertools.islice(pairs, size) if size else pairs:
        count += 1
        yield pair
    if size and count < size:
        report.notes.append(f"{split}_size = {size:,} but {where} has {count:,} pairs: "
                            f"using all {count:,}")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]

