"""Encode stage: every split through the tokenizer, ids cached as numpy arrays in the run dir.

Conventions (shared with decoding): source ids = tokens + [</s>]; target ids = [<s>] + tokens +
[</s>]. A pair is kept when the model can take it: the source and the decoder input/output
(target minus one) are at most ``model.max_len`` long. Longer pairs are dropped and counted.

Each split is stored as one flat int32 array of ids plus int64 offsets (row i is
``ids[offsets[i]:offsets[i + 1]]``), for the source and the target side: one ``.npy`` file per
array, written chunk by chunk as the pairs are encoded and memory-mapped when loaded, so neither
the text nor the ids of a WMT14-size corpus need to fit in memory. ``data/fingerprint.json``
records what produced the arrays; a run with the same corpus, tokenizers and max_len reuses them.

Speed: the pairs go to the library's ``encode_batch`` in chunks of ``CHUNK`` sentences, which it
spreads over its threads (RAYON_NUM_THREADS, all cores unless TOKENIZERS_PARALLELISM=false).
(``encode_batch_fast``, which skips the character offsets, measured 1.6x *more* CPU time here
with tokenizers 0.23 on our BPE tokenizers.)
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from engine import atomic
from engine.control import RunControl, RunStopped
from engine.errors import DataError, EngineError
from engine.events import Emit, EncodeProgress, Notice
from engine.progress import ProgressClock
from engine.stages import StageResult
from engine.vocab import BOS_ID, EOS_ID

if TYPE_CHECKING:
    from engine.data.corpus import Corpus, Pairs
    from engine.tokenizer.stage import TokenizerSet

SPLITS = ("train", "valid", "test")
CACHE_VERSION = 2  # bump when the array layout changes (2: one .npy per array, memory-mapped)
CHUNK = 10_000  # pairs per encode_batch call: work for every core, a progress event, a stop check
ARRAYS = ("src_ids", "src_offsets", "tgt_ids", "tgt_offsets")


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

    # computed once: collate reads them for every batch, and a WMT14 split has 4.5M rows
    @functools.cached_property
    def src_lengths(self) -> np.ndarray:
        return np.diff(self.src_offsets)

    @functools.cached_property
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


def _chunks(pairs: "Pairs", size: int) -> Iterator[tuple[list[str], list[str]]]:
    if hasattr(pairs, "chunks"):  # PairFiles: read from the files a chunk at a time
        yield from pairs.chunks(size)
        return
    for start in range(0, len(pairs), size):
        chunk = pairs[start:start + size]
        yield [p[0] for p in chunk], [p[1] for p in chunk]


def _rows(rows: list[list[int]], lengths: np.ndarray, keep: np.ndarray, before: tuple[int, ...],
          after: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The kept rows as one flat id array, each wrapped in ``before`` and ``after``, and the
    wrapped lengths: numpy does the copying, not a Python loop over tokens."""
    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32,
                       count=int(lengths.sum()))
    body = lengths[keep]
    out_lengths = body + len(before) + len(after)
    ends = np.cumsum(out_lengths)
    starts = ends - out_lengths
    out = np.empty(int(ends[-1]) if len(ends) else 0, dtype=np.int32)
    # where each kept token goes: its row's body start plus its place in the row
    body_starts = starts + len(before)
    token_row_start = np.repeat(body_starts - (np.cumsum(body) - body), body)
    out[token_row_start + np.arange(int(body.sum()))] = flat[np.repeat(keep, lengths)]
    for i, token in enumerate(before):
        out[starts + i] = token
    for i, token in enumerate(after):
        out[body_starts + body + i] = token
    return out, out_lengths


@dataclass
class EncodedChunk:
    src_ids: np.ndarray
    src_lengths: np.ndarray
    tgt_ids: np.ndarray
    tgt_lengths: np.ndarray
    dropped: int


def encode_chunk(sources: list[str], targets: list[str], src_tokenizer, tgt_tokenizer,
                 max_len: int) -> EncodedChunk:
    """Ids for one chunk of pairs with the library's batch encoder; drops the pairs the model
    cannot take (the encoder sees len(src) + 1 positions, the decoder len(tgt) + 1)."""
    src_rows = [e.ids for e in src_tokenizer.encode_batch(sources, add_special_tokens=False)]
    tgt_rows = [e.ids for e in tgt_tokenizer.encode_batch(targets, add_special_tokens=False)]
    src_lengths = np.fromiter(map(len, src_rows), dtype=np.int64, count=len(src_rows))
    tgt_lengths = np.fromiter(map(len, tgt_rows), dtype=np.int64, count=len(tgt_rows))
    keep = (src_lengths + 1 <= max_len) & (tgt_lengths + 1 <= max_len)
    src_ids, src_out = _rows(src_rows, src_lengths, keep, (), (EOS_ID,))
    tgt_ids, tgt_out = _rows(tgt_rows, tgt_lengths, keep, (BOS_ID,), (EOS_ID,))
    return EncodedChunk(src_ids, src_out, tgt_ids, tgt_out, int((~keep).sum()))


def _offsets(lengths: list[np.ndarray]) -> np.ndarray:
    joined = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    offsets = np.zeros(len(joined) + 1, dtype=np.int64)
    np.cumsum(joined, out=offsets[1:])
    return offsets


def encode_pairs(pairs: "Pairs", src_tokenizer, tgt_tokenizer, max_len: int,
                 should_stop: Callable[[], bool] = lambda: False) -> EncodedSplit:
    """One split encoded in memory (the stage writes to files instead; see encode_split)."""
    chunks = []
    for sources, targets in _chunks(pairs, CHUNK):
        if should_stop():
            raise RunStopped()
        chunks.append(encode_chunk(sources, targets, src_tokenizer, tgt_tokenizer, max_len))
    empty = np.zeros(0, np.int32)
    return EncodedSplit(
        np.concatenate([c.src_ids for c in chunks]) if chunks else empty,
        _offsets([c.src_lengths for c in chunks]),
        np.concatenate([c.tgt_ids for c in chunks]) if chunks else empty,
        _offsets([c.tgt_lengths for c in chunks]), sum(c.dropped for c in chunks))


# --- cache ---------------------------------------------------------------------------------


class NpyStream:
    """A 1-D ``.npy`` file written chunk by chunk: the header, whose shape is known only at the
    end, has a fixed size reserved in front and is filled in by ``close``. ``np.load`` (and its
    mmap_mode) reads it like any .npy. Written to a temporary name, renamed when complete."""

    HEADER = 128  # bytes: magic, version, header length, the header dict padded with spaces

    def __init__(self, path: Path, dtype: type) -> None:
        self.path, self.dtype = Path(path), np.dtype(dtype)
        self.temp = atomic.temporary_name(self.path)
        self.file = open(self.temp, "wb")
        self.file.write(bytes(self.HEADER))
        self.count = 0

    def write(self, values: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(values, dtype=self.dtype).tobytes())
        self.count += len(values)

    def header(self) -> bytes:
        described = (f"{{'descr': '{np.lib.format.dtype_to_descr(self.dtype)}', "
                     f"'fortran_order': False, 'shape': ({self.count},), }}")
        size = self.HEADER - 10  # after the magic string (6), version (2) and length (2)
        return (b"\x93NUMPY\x01\x00" + struct.pack("<H", size)
                + described.ljust(size - 1).encode("latin1") + b"\n")

    def close(self) -> None:
        self.file.seek(0)
        self.file.write(self.header())
        self.file.close()
        os.replace(self.temp, self.path)

    def discard(self) -> None:
        self.file.close()
        self.temp.unlink(missing_ok=True)


def array_path(cache_dir: Path, split: str, array: str) -> Path:
    return Path(cache_dir) / f"{split}.{array}.npy"


def encode_split(pairs: "Pairs", src_tokenizer, tgt_tokenizer, max_len: int, cache_dir: Path,
                 split: str, on_chunk: Callable[[int], None] = lambda done: None) -> tuple[int, int]:
    """Encode one split into its four .npy files, a chunk at a time; returns (pairs kept,
    pairs dropped). ``on_chunk(pairs done)`` runs after every chunk (progress, stop checks)."""
    streams = {name: NpyStream(array_path(cache_dir, split, name),
                               np.int64 if name.endswith("offsets") else np.int32)
               for name in ARRAYS}
    try:
        ends = {"src": 0, "tgt": 0}  # the offset where the next row starts
        for side in ends:
            streams[f"{side}_offsets"].write(np.zeros(1, np.int64))
        done = dropped = 0
        for sources, targets in _chunks(pairs, CHUNK):
            chunk = encode_chunk(sources, targets, src_tokenizer, tgt_tokenizer, max_len)
            for side, ids, lengths in (("src", chunk.src_ids, chunk.src_lengths),
                                       ("tgt", chunk.tgt_ids, chunk.tgt_lengths)):
                streams[f"{side}_ids"].write(ids)
                streams[f"{side}_offsets"].write(ends[side] + np.cumsum(lengths))
                ends[side] += int(lengths.sum())
            dropped += chunk.dropped
            done += len(sources)
            on_chunk(done)
        for stream in streams.values():
            stream.close()
    except BaseException:
        for stream in streams.values():
            stream.discard()
        raise
    return streams["src_offsets"].count - 1, dropped


def load_encoded(cache_dir: Path, fingerprint: str) -> EncodedData | None:
    """The cached arrays, memory-mapped, if they were made from the same inputs, else None."""
    try:
        meta = json.loads((cache_dir / "fingerprint.json").read_text(encoding="utf-8"))
        if meta.get("fingerprint") != fingerprint or meta.get("version") != CACHE_VERSION:
            return None
        splits = {}
        for name in SPLITS:
            arrays = [_load_array(array_path(cache_dir, name, array)) for array in ARRAYS]
            split = EncodedSplit(*arrays, dropped=int(meta["dropped"][name]))
            if len(split) != meta["pairs"][name] or split.src_offsets[-1] != len(split.src_ids) \
                    or split.tgt_offsets[-1] != len(split.tgt_ids):
                return None
            splits[name] = split
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or damaged: encode again
    return EncodedData(fingerprint=fingerprint, **splits)


def _load_array(path: Path) -> np.ndarray:
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    if array.ndim != 1:
        raise ValueError(f"{path}: not a 1-D array")
    return array


# --- stage ---------------------------------------------------------------------------------


def run_encode_stage(corpus: "Corpus", tokenizers: "TokenizerSet", max_len: int, run_dir: Path,
                     emit: Emit, control: RunControl) -> StageResult[EncodedData]:
    cache_dir = Path(run_dir) / "data"
    fingerprint = encode_fingerprint(corpus.fingerprint(), tokenizers.src.to_str(),
                                     tokenizers.tgt.to_str(), max_len)
    clock = ProgressClock(control.paused_so_far)
    data = load_encoded(cache_dir, fingerprint)
    reused = data is not None
    if data is None:
        _encode_all(corpus, tokenizers, max_len, cache_dir, fingerprint, emit, control)
        data = load_encoded(cache_dir, fingerprint)
        if data is None:
            raise EngineError(f"{cache_dir}: the encoded arrays just written cannot be read back")
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
        info["pairs_per_second"] = round(clock.rate(sum(len(getattr(corpus, n)) for n in SPLITS)))
    return StageResult(output=data, info=info, reused=reused)


def _encode_all(corpus: "Corpus", tokenizers: "TokenizerSet", max_len: int, cache_dir: Path,
                fingerprint: str, emit: Emit, control: RunControl) -> None:
    """Every split into its .npy files, with EncodeProgress events; the fingerprint last."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    (cache_dir / "fingerprint.json").unlink(missing_ok=True)  # arrays first, fingerprint last
    pairs, dropped = {}, {}
    for name in SPLITS:
        split_pairs = getattr(corpus, name)
        total, clock = len(split_pairs), ProgressClock(control.paused_so_far)

        def on_chunk(done: int, name: str = name, total: int = total,
                     clock: ProgressClock = clock) -> None:
            if done >= total or clock.due():
                emit(EncodeProgress(split=name, done=done, total=total,
                                    per_second=clock.rate(done), eta=clock.eta(done, total),
                                    elapsed=round(clock.elapsed(), 3)))
            if control.checkpoint():  # waits while paused
                raise RunStopped()

        if control.checkpoint():
            raise RunStopped()
        pairs[name], dropped[name] = encode_split(split_pairs, tokenizers.src, tokenizers.tgt,
                                                  max_len, cache_dir, name, on_chunk)
        (cache_dir / f"{name}.npz").unlink(missing_ok=True)  # version 1's file, if any
    meta = {"fingerprint": fingerprint, "version": CACHE_VERSION, "pairs": pairs,
            "dropped": dropped}
    atomic.write_text(cache_dir / "fingerprint.json", json.dumps(meta, indent=2))
