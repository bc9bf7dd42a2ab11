"""WMT14 English-German through `datasets` (newstest2013 validates, newstest2014 tests)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator
from urllib.parse import urlparse

from engine.data.corpus import Corpus, LoadReport, Pair, first_line, first_pairs, needs_swap, split_sizes
from engine.data.library_progress import library_progress
from engine.errors import DataError
from engine.events import Emit

if TYPE_CHECKING:
    from engine.config import DataConfig

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
    sizes = split_sizes(cfg)
    splits = {split: first_pairs(pairs or [], sizes[split], split,
                                 f"WMT14 {WMT14_SPLITS[split]}", report)
              for split, pairs in wmt14_splits(cfg, data_files, report).items()}
    return Corpus(splits["train"], splits["valid"], splits["test"],
                  src_lang=cfg.src_lang, tgt_lang=cfg.tgt_lang)


def wmt14_splits(cfg: "DataConfig", data_files: dict[str, str] | None = None,
                 report: LoadReport | None = None,
                 emit: Emit | None = None) -> dict[str, Iterator[Pair] | None]:
    """Each split's pairs, in the direction ``cfg`` asks for, read as they are consumed (None:
    a split ``data_files`` lacks). ``emit`` receives the download's progress as events."""
    report = report if report is not None else LoadReport()
    swap = needs_swap(cfg)
    if data_files is None and not _offline_mode() and not _proxy_configured() \
            and not hub_reachable():
        raise DataError("WMT14 could not be downloaded: huggingface.co is unreachable "
                        f"(offline / no network); {OFFLINE_HINT} (if WMT14 is already in the "
                        "datasets cache, set HF_DATASETS_OFFLINE=1)")
    # Part of the training data: stream just the rows needed (100,000 pairs do not download
    # all 4.5M). All of it: download once into the datasets cache, which later runs reuse.
    stream = cfg.train_size > 0
    return {split: (None if data_files is not None and hf_split not in data_files else
                    _wmt14_pairs(split, hf_split, data_files, stream, swap, report, emit))
            for split, hf_split in WMT14_SPLITS.items()}


def _wmt14_pairs(split: str, hf_split: str, data_files: dict[str, str] | None, stream: bool,
                 swap: bool, report: LoadReport, emit: Emit | None) -> Iterator[Pair]:
    blank = [0]
    try:
        with library_progress(emit):
            for en, de in _wmt14_split(hf_split, data_files, stream, blank):
                yield (de, en) if swap else (en, de)
    except DataError:
        raise
    except _network_errors() as exc:
        if data_files is not None:
            raise DataError(f"{', '.join(data_files.values())}: cannot read as WMT14 parquet: "
                            f"{first_line(exc)}") from None
        why = "HF_DATASETS_OFFLINE is set" if _offline_mode() else first_line(exc)
        raise DataError(f"WMT14 could not be downloaded (offline / no network: {why}); "
                        f"{OFFLINE_HINT}") from None
    finally:
        if blank[0]:
            report.dropped_blank[split] = blank[0]


def _proxy_configured() -> bool:
    return any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY",
                                                 "all_proxy"))


def _wmt14_split(hf_split: str, data_files: dict[str, str] | None, stream: bool,
                 blank: list[int]) -> Iterator[Pair]:
    """(en, de) pairs of one split; blank pairs are dropped and counted in ``blank[0]``."""
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
    for translation in _translations(dataset, where):
        en, de = (translation["en"] or "").strip(), (translation["de"] or "").strip()
        if en and de:
            yield en, de
        else:
            blank[0] += 1


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

