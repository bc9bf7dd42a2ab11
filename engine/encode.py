"""Encode stage: every split through the tokenizer, ids cached as numpy arrays in the run dir.

Conventions (shared with decoding): source ids = tokens + [</s>]; target ids = [<s>] + tokens +
[</s>]. A pair is kept when the model can take it: the source and the decoder input/output
(target minus one) are at most ``model.max_len`` long. Longer pairs are dropped and counted.

Each split is stored as one flat int32 array of ids plus int64 offsets (row i is
``ids[offsets[i]:offsets[i + 1]]``), for the source and the target side. ``data/fingerprint.json``
records what produced the arrays; a run with the same corpus, tokenizers and max_len reuses them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from engine import atomic
from engine.control import RunControl, RunStopped
from engine.errors import DataError
from engine.events import Emit, Notice
from engine.stages import StageResult
from engine.vocab import BOS_ID, EOS_ID

if TYPE_CHECKING:
    from engine.data.corpus import Corpus
    from engine.tokenizer.stage import TokenizerSet

SPLITS = ("train", "valid", "test")
CACHE_VERSION = 1  # bump when the array layout changes
CHUNK = 10_000  # sentences per encode_batch call: bounded memory, a chance to stop between


@dataclass
class EncodedSplit:
    """One split's pairs as flat id arrays; rows are pairs, in corpus order minus dropped ones."""

    src_ids: np.ndarray  # int32, all source rows concatenated
    src_offsets: np.ndarray  # int64, len(pairs) + 1
    tgt_ids: np.ndarray
    tgt_offsets: np.ndarray
    dropped: int = 0  # pairs longer than max_len

    def __len__(self) -> int:
        return len(self.src_offsets) - 1

    @property
    def src_lengths(self) -> np.ndarray:
        return np.diff(self.src_offsets)

    @property
    def tgt_lengths(self) -> np.ndarray:
        return np.diff(self.tgt_offsets)

    def src(self, i: int) -> np.ndarray:
        return self.src_ids[self.src_offsets[i]:self.src_offsets[i + 1]]

    def tgt(self, i: int) -> np.ndarray:
        return self.tgt_ids[self.tgt_offsets[i]:self.tgt_offsets[i + 1]]


@dataclass
class EncodedData:
    train: EncodedSplit
    valid: EncodedSplit
    test: EncodedSplit
    fingerprint: str

    def split(self, name: str) -> EncodedSplit:
        return getattr(self, name)


def encode_fingerprint(corpus_fingerprint: str, src_json: str, tgt_json: str, max_len: int) -> str:
    digest = hashlib.sha256(f"encode-v{CACHE_VERSION}\n{corpus_fingerprint}\n{max_len}\n".encode())
    digest.update(src_json.encode())
    digest.update(b"\n--tgt--\n")
    digest.update(tgt_json.encode())
    return digest.hexdigest()


def _stack(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Rows as one flat id array and their lengths."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    ids = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32, count=int(lengths.sum()))
    return ids, lengths


def _join(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int32)
    lengths = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return ids, offsets


def encode_pairs(pairs: Sequence[tuple[str, str]], src_tokenizer, tgt_tokenizer, max_len: int,
                 should_stop=lambda: False) -> EncodedSplit:
    """Ids for each pair with the library's batch encoder; drops pairs the model cannot take."""
    src_parts, tgt_parts = [], []
    dropped = 0
    for start in range(0, len(pairs), CHUNK):
        if should_stop():
            raise RunStopped()
        chunk = pairs[start:start + CHUNK]
        src_enc = src_tokenizer.encode_batch([p[0] for p in chunk], add_special_tokens=False)
        tgt_enc = tgt_tokenizer.encode_batch([p[1] for p in chunk], add_special_tokens=False)
        src_rows, tgt_rows = [], []
        for s, t in zip(src_enc, tgt_enc):
            src, tgt = s.ids, t.ids
            # the encoder sees len(src) + 1 positions, the decoder len(tgt) + 1
            if len(src) + 1 > max_len or len(tgt) + 1 > max_len:
                dropped += 1
                continue
            src_rows.append(src + [EOS_ID])
            tgt_rows.append([BOS_ID] + tgt + [EOS_ID])
        src_parts.append(_stack(src_rows))
        tgt_parts.append(_stack(tgt_rows))
    src_ids, src_offsets = _join(src_parts)
    tgt_ids, tgt_offsets = _join(tgt_parts)
    return EncodedSplit(src_ids, src_offsets, tgt_ids, tgt_offsets, dropped)


# --- cache ---------------------------------------------------------------------------------


def save_encoded(data: EncodedData, cache_dir: Path) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    (cache_dir / "fingerprint.json").unlink(missing_ok=True)  # arrays first, fingerprint last
    for name in SPLITS:
        split = data.split(name)
        arrays = {"src_ids": split.src_ids, "src_offsets": split.src_offsets,
                  "tgt_ids": split.tgt_ids, "tgt_offsets": split.tgt_offsets,
                  "dropped": np.array(split.dropped, dtype=np.int64)}
        with atomic.atomic_file(cache_dir / f"{name}.npz") as f:
            np.savez(f, **arrays)
    meta = {"fingerprint": data.fingerprint, "version": CACHE_VERSION,
            "pairs": {name: len(data.split(name)) for name in SPLITS}}
    atomic.write_text(cache_dir / "fingerprint.json", json.dumps(meta, indent=2))


def load_encoded(cache_dir: Path, fingerprint: str) -> EncodedData | None:
    """The cached arrays if they were made from the same inputs, else None."""
    try:
        meta = json.loads((cache_dir / "fingerprint.json").read_text(encoding="utf-8"))
        if meta.get("fingerprint") != fingerprint:
            return None
        splits = {}
        for name in SPLITS:
            with np.load(cache_dir / f"{name}.npz", allow_pickle=False) as z:
                splits[name] = EncodedSplit(z["src_ids"], z["src_offsets"], z["tgt_ids"],
                                            z["tgt_offsets"], int(z["dropped"]))
    except (OSError, ValueError, KeyError):
        return None  # missing or damaged: encode again
    return EncodedData(fingerprint=fingerprint, **splits)


# --- stage ---------------------------------------------------------------------------------


def run_encode_stage(corpus: "Corpus", tokenizers: "TokenizerSet", max_len: int, run_dir: Path,
                     emit: Emit, control: RunControl) -> StageResult[EncodedData]:
    cache_dir = Path(run_dir) / "data"
    fingerprint = encode_fingerprint(corpus.fingerprint(), tokenizers.src.to_str(),
                                     tokenizers.tgt.to_str(), max_len)
    started = time.monotonic()
    data = load_encoded(cache_dir, fingerprint)
    reused = data is not None
    if data is None:
        splits = {name: encode_pairs(getattr(corpus, name), tokenizers.src, tokenizers.tgt,
                                     max_len, should_stop=control.checkpoint)
                  for name in SPLITS}
        data = EncodedData(fingerprint=fingerprint, **splits)
        save_encoded(data, cache_dir)
    if len(data.train) == 0:
        raise DataError(f"[model] max_len = {max_len}: every training pair is longer, "
                        "none is left to train on (raise model.max_len)")
    dropped = {name: data.split(name).dropped for name in SPLITS}
    if any(dropped.values()):
        counts = ", ".join(f"{n} {name}" for name, n in dropped.items() if n)
        emit(Notice(text=f"encode: dropped {counts} pairs longer than "
                         f"model.max_len = {max_len} tokens"))
    info = {f"{name}_pairs": len(data.split(name)) for name in SPLITS}
    info["dropped"] = sum(dropped.values())
    info["train_tokens"] = int(len(data.train.src_ids) + len(data.train.tgt_ids))
    if not reused:
        info["pairs_per_second"] = round(
            sum(len(getattr(corpus, n)) for n in SPLITS) / max(time.monotonic() - started, 1e-9))
    return StageResult(output=data, info=info, reused=reused)
