"""Data sources: the built-in sample, local parallel files, WMT14 through `datasets`.

Every source yields one ``Corpus``: train, valid and test lists of (source, target) pairs.
``load_corpus(cfg)`` picks the source named by ``[data] source``; ``run_data_stage`` is the
pipeline's first stage.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import socket
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator
from urllib.parse import urlparse

from engine.errors import DataError
from engine.events import Notice

if TYPE_CHECKING:
    from engine.config import DataConfig
    from engine.pipeline import RunContext, StageResult

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


def load_corpus(cfg: "DataConfig", report: LoadReport | None = None) -> Corpus:
    """The corpus ``cfg`` describes: source, sizes (0 = all) and direction src_lang->tgt_lang.

    Raises ``DataError`` with one line naming the file (and line) for anything unusable.
    """
    report = report if report is not None else LoadReport()
    if cfg.source == "sample":
        corpus = _load_sample(cfg)
    elif cfg.source == "local":
        corpus = load_local(cfg, report)
    elif cfg.source == "wmt14":
        corpus = load_wmt14(cfg, report=report)
    else:
        raise DataError(f"[data] source = {cfg.source!r}: must be one of sample, wmt14, local")
    if not corpus.train:
        raise DataError(f"[data] source = {cfg.source!r}: the training split is empty")
    return corpus


def _sizes(cfg: "DataConfig") -> dict[str, int]:
    return {"train": cfg.train_size, "valid": cfg.valid_size, "test": cfg.test_size}


def _direction(cfg: "DataConfig", corpus_langs: tuple[str, str] = ("en", "de")) -> bool:
    """True when pairs stored as ``corpus_langs`` must be swapped for src_lang->tgt_lang."""
    if {cfg.src_lang, cfg.tgt_lang} != set(corpus_langs):
        raise DataError(f"[data] source = {cfg.source!r} has {corpus_langs[0]} and "
                        f"{corpus_langs[1]} only, not {cfg.src_lang}-{cfg.tgt_lang}")
    return cfg.src_lang == corpus_langs[1]


def _swap(pairs: list[Pair]) -> list[Pair]:
    return [(tgt, src) for src, tgt in pairs]


# --- sample --------------------------------------------------------------------------------


def _load_sample(cfg: "DataConfig") -> Corpus:
    from engine.sample_data import sample_corpus

    swap = _direction(cfg)
    corpus = sample_corpus(cfg.train_size, cfg.valid_size, cfg.test_size, cfg.seed)
    if swap:
        corpus = Corpus(_swap(corpus.train), _swap(corpus.valid), _swap(corpus.test),
                        src_lang="de", tgt_lang="en")
    return corpus


# --- local files ---------------------------------------------------------------------------


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
        raise DataError(f"{path}: corrupt or truncated gzip file ({_one_line(exc)}); "
                        "give a valid .gz or the uncompressed file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or _one_line(exc)}") from None
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
    sizes = _sizes(cfg)
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
        splits[split] = _first(pairs, sizes[split], split, f"{src} / {tgt}", report)
    return Corpus(splits["train"], splits["valid"], splits["test"],
                  src_lang=cfg.src_lang, tgt_lang=cfg.tgt_lang)


def _first(pairs: list[Pair], size: int, split: str, where: str,
           report: LoadReport) -> list[Pair]:
    if size and size > len(pairs):
        report.notes.append(f"{split}_size = {size:,} but {where} has {len(pairs):,} pairs: "
                            f"using all {len(pairs):,}")
    return pairs[:size] if size else pairs


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


# --- WMT14 ---------------------------------------------------------------------------------

# The Hub's home of what datasets used to call "wmt14": parquet files, config de-en, whose
# validation split is newstest2013 (3,000 pairs) and test split newstest2014 (3,003 pairs).
WMT14_DATASET = "wmt/wmt14"
WMT14_CONFIG = "de-en"
WMT14_SPLITS = {"train": "train", "valid": "validation", "test": "test"}
OFFLINE_HINT = ("use --preset sample, or --set data.source=local with data.train_src, "
                "data.train_tgt, data.valid_src and data.valid_tgt")


def _offline_mode() -> bool:
    return any(os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE")
               for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


def hub_reachable(endpoint: str | None = None, timeout: float = 3.0) -> bool:
    """Can a TCP connection reach the Hub? Seconds at most, where datasets retries for ~25 s."""
    if endpoint is None:
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def _network_errors() -> tuple[type[BaseException], ...]:
    """What datasets and huggingface_hub raise when a download cannot happen."""
    from datasets.exceptions import DatasetsError

    errors: list[type[BaseException]] = [OSError, DatasetsError, TimeoutError]
    for module in ("httpx", "httpx2", "requests"):
        try:
            lib = __import__(module)
        except ImportError:
            continue
        for name in ("HTTPError", "RequestException"):
            if isinstance(getattr(lib, name, None), type):
                errors.append(getattr(lib, name))
    return tuple(errors)


def load_wmt14(cfg: "DataConfig", data_files: dict[str, str] | None = None,
               report: LoadReport | None = None) -> Corpus:
    """WMT14 English-German through ``datasets``: the first ``train_size`` training pairs,
    newstest2013 as validation and newstest2014 as test (the first valid/test_size of them).

    ``data_files``: split ("train", "validation", "test") -> local parquet file with the
    same schema (a ``translation`` column of {"de": ..., "en": ...}), read through the same
    code path instead of the Hub: for tests and offline mirrors. A missing split is empty.
    """
    report = report if report is not None else LoadReport()
    swap = _direction(cfg)
    if data_files is None and not _offline_mode() and not _proxy_configured() \
            and not hub_reachable():
        raise DataError("WMT14 could not be downloaded: huggingface.co is unreachable "
                        f"(offline / no network); {OFFLINE_HINT} (if WMT14 is already in the "
                        "datasets cache, set HF_DATASETS_OFFLINE=1)")
    sizes = _sizes(cfg)
    # Part of the training data: stream just the rows needed (100,000 pairs do not download
    # all 4.5M). All of it: download once into the datasets cache, which later runs reuse.
    stream = cfg.train_size > 0
    splits: dict[str, list[Pair]] = {}
    try:
        for split, hf_split in WMT14_SPLITS.items():
            if data_files is not None and hf_split not in data_files:
                splits[split] = []
                continue
            pairs, dropped = _wmt14_split(hf_split, sizes[split], data_files, stream)
            if dropped:
                report.dropped_blank[split] = dropped
            if sizes[split] and len(pairs) < sizes[split]:
                report.notes.append(f"{split}_size = {sizes[split]:,} but WMT14 {hf_split} has "
                                    f"{len(pairs):,} pairs: using all {len(pairs):,}")
            splits[split] = _swap(pairs) if swap else pairs
    except DataError:
        raise
    except _network_errors() as exc:
        if data_files is not None:
            raise DataError(f"{', '.join(data_files.values())}: cannot read as WMT14 parquet: "
                            f"{_one_line(exc)}") from None
        why = "HF_DATASETS_OFFLINE is set" if _offline_mode() else _one_line(exc)
        raise DataError(f"WMT14 could not be downloaded (offline / no network: {why}); "
                        f"{OFFLINE_HINT}") from None
    return Corpus(splits["train"], splits["valid"], splits["test"],
                  src_lang=cfg.src_lang, tgt_lang=cfg.tgt_lang)


def _proxy_configured() -> bool:
    return any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY",
                                                 "all_proxy"))


def _wmt14_split(hf_split: str, size: int, data_files: dict[str, str] | None,
                 stream: bool) -> tuple[list[Pair], int]:
    """(en, de) pairs of one split and the number of blank pairs dropped."""
    import datasets

    datasets.disable_progress_bars()  # tqdm writes to stderr, where the TUI draws
    datasets.logging.set_verbosity_error()
    if data_files is None:
        path, name, files = WMT14_DATASET, WMT14_CONFIG, None
    else:
        local = Path(data_files[hf_split]).expanduser()
        if not local.is_file():
            raise DataError(f"{local}: file not found")
        path, name, files = "parquet", None, {hf_split: str(local)}
    dataset = datasets.load_dataset(path, name, data_files=files, split=hf_split,
                                    streaming=stream)
    where = data_files[hf_split] if data_files else f"{WMT14_DATASET} {hf_split}"
    pairs: list[Pair] = []
    dropped = 0
    for translation in _translations(dataset, where):
        en, de = (translation["en"] or "").strip(), (translation["de"] or "").strip()
        if en and de:
            pairs.append((en, de))
            if len(pairs) == size:  # the first ``size`` pairs; reading stops here
                break
        else:
            dropped += 1
    return pairs, dropped


def _translations(dataset: Any, where: str) -> Iterator[dict[str, str]]:
    """The ``translation`` values of a Dataset or IterableDataset, read in batches."""
    for batch in dataset.iter(batch_size=1000):
        column = batch.get("translation")
        if column is None:
            raise DataError(f"{where}: no translation column (columns: {', '.join(batch)}); "
                            'rows need translation = {"de": ..., "en": ...}')
        for translation in column:
            if not isinstance(translation, dict) or "en" not in translation \
                    or "de" not in translation:
                raise DataError(f"{where}: a translation is {str(translation)[:80]}, not "
                                '{"de": ..., "en": ...}')
            yield translation


# --- the stage -----------------------------------------------------------------------------


def run_data_stage(ctx: "RunContext") -> "StageResult":
    """First stage: load the corpus the config names; its output is the ``Corpus``."""
    from engine.pipeline import StageResult

    cfg = ctx.config.data
    if cfg.source == "wmt14":
        ctx.emit(Notice(text="Loading WMT14 English-German through datasets "
                             "(the first run downloads it)"))
    report = LoadReport()
    corpus = load_corpus(cfg, report)
    dropped = sum(report.dropped_blank.values())
    if dropped:
        per_split = ", ".join(f"{split} {n:,}" for split, n in report.dropped_blank.items())
        ctx.emit(Notice(text=f"Dropped {dropped:,} blank line pairs ({per_split})"))
    for note in report.notes:
        ctx.emit(Notice(text=note, level="warning"))
    info: dict[str, Any] = {**corpus.counts(), "source": cfg.source,
                            "direction": f"{corpus.src_lang}->{corpus.tgt_lang}",
                            "dropped_blank": dropped}
    if cfg.source == "sample":
        info["seed"] = cfg.seed
    return StageResult(output=corpus, info=info)
