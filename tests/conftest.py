"""Shared fixtures. Tests never reach the network: datasets and the Hub run in offline mode."""

import os

# set before anything imports datasets or huggingface_hub, which read them at import time
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

import gzip  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

import engine  # noqa: E402,F401  (sets its OpenMP and malloc defaults before any test module imports torch)

MULTI30K = Path(__file__).parents[1] / ".." / "shared" / "data" / "multi30k"


@pytest.fixture
def multi30k_dir() -> Path:
    """The Multi30k English-German files (29,000 / 1,014 / 1,000 pairs, gzip), if present."""
    path = MULTI30K.resolve()
    if not (path / "train.en.gz").is_file():
        pytest.skip(f"Multi30k not found at {path}")
    return path


@pytest.fixture
def in_a_fresh_directory(tmp_path, monkeypatch):
    """The app looks for earlier runs in saved/ under the current directory: use an empty one."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def write_text(tmp_path):
    """write_text(name, lines) -> Path: one line per item, gzip-compressed for a .gz name.

    ``data`` writes raw bytes instead, for files that are broken on purpose.
    """

    def write(name: str, lines: list[str] | None = None, data: bytes | None = None) -> Path:
        path = tmp_path / name
        if data is None:
            data = "".join(line + "\n" for line in lines or []).encode("utf-8")
        if name.endswith(".gz"):
            data = gzip.compress(data)
        path.write_bytes(data)
        return path

    return write


@pytest.fixture
def datasets_cache(tmp_path, monkeypatch) -> Path:
    """Points the datasets cache at a temporary directory (non-streaming loads write there, and
    downloads: those go to a path datasets fixes at import time unless told)."""
    import datasets

    cache = tmp_path / "hf-datasets-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "DOWNLOADED_DATASETS_PATH", cache / "downloads")
    return cache


@pytest.fixture
def wmt14_parquet(tmp_path, datasets_cache) -> dict[str, str]:
    """Small parquet files in the WMT14 de-en schema: split -> path (and a temporary
    datasets cache for what loading them writes).

    train has 40 rows with a blank pair at row 5 (0-based), validation 12, test 10; row i says
    "Sentence i of <split>." / "Satz i von <split>.".
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = {}
    for split, rows in (("train", 40), ("validation", 12), ("test", 10)):
        translations = [{"de": f"Satz {i} von {split}.", "en": f"Sentence {i} of {split}."}
                        for i in range(rows)]
        if split == "train":
            translations[5] = {"de": " ", "en": ""}
        path = tmp_path / f"wmt14-{split}.parquet"
        pq.write_table(pa.table({"translation": translations}), path)
        files[split] = str(path)
    return files


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from a second thread, and on a shared machine a busy second
    core makes every small op wait for it: one thread keeps these tests fast and steady."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
