"""Encode stage: ids with the training conventions, long pairs dropped and counted, a cache."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from engine.config import config_from_dict
from engine.control import RunControl
from engine.data.corpus import Corpus
from engine.encode import run_encode_stage
from engine.errors import DataError
from engine.events import Notice
from engine.tokenizer.stage import TokenizerSet
from engine.vocab import BOS_ID, EOS_ID

TRAIN = [("a small dog runs", "ein kleiner hund rennt"),
         ("the red car is fast", "das rote auto ist schnell"),
         ("a cat sleeps", "eine katze schlaeft")] * 10
LONG = ("the red car " * 12, "das rote auto " * 12)  # far over max_len = 16 tokens


def tokenizer_set(pairs):
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator([s for p in pairs for s in p], trainers.BpeTrainer(
        vocab_size=60, special_tokens=["<pad>", "<unk>", "<s>", "</s>"], show_progress=False))
    return TokenizerSet(src=tok, tgt=tok, shared=True, files=[])


@pytest.fixture(scope="module")
def tokenizers():
    return tokenizer_set(TRAIN)


def encode(run_dir, corpus, tokenizers, max_len=16):
    events = []
    config = config_from_dict({"model": {"max_len": max_len}})
    result = run_encode_stage(corpus, tokenizers, config.model.max_len, run_dir, events.append,
                              RunControl())
    return result, events


def test_sources_end_with_eos_and_targets_are_wrapped_in_bos_eos(tmp_path, tokenizers):
    corpus = Corpus(train=TRAIN, valid=TRAIN[:2], test=TRAIN[2:3])
    result, _ = encode(tmp_path, corpus, tokenizers)
    data = result.output
    assert (len(data.train), len(data.valid), len(data.test)) == (30, 2, 1)
    for i, (src, tgt) in enumerate(TRAIN[:3]):
        assert data.train.src(i).tolist() == tokenizers.src.encode(src).ids + [EOS_ID]
        assert data.train.tgt(i).tolist() == [BOS_ID] + tokenizers.tgt.encode(tgt).ids + [EOS_ID]
    assert result.info["dropped"] == 0 and not result.reused
    assert result.info["train_tokens"] == len(data.train.src_ids) + len(data.train.tgt_ids)


def test_pairs_longer_than_max_len_are_dropped_and_reported(tmp_path, tokenizers):
    corpus = Corpus(train=TRAIN + [LONG, LONG], valid=[LONG] + TRAIN[:2], test=[])
    result, events = encode(tmp_path, corpus, tokenizers, max_len=16)
    assert len(result.output.train) == 30 and result.output.train.dropped == 2
    assert len(result.output.valid) == 2 and result.output.valid.dropped == 1
    assert result.info["dropped"] == 3
    notices = [e.text for e in events if isinstance(e, Notice)]
    assert notices == [
        "encode: dropped 2 train, 1 valid pairs longer than model.max_len = 16 tokens"]
    longest = max(result.output.train.src_lengths.max(), result.output.train.tgt_lengths.max() - 1)
    assert longest <= 16


def test_a_second_run_reuses_the_cached_ids_until_an_input_changes(tmp_path, tokenizers):
    corpus = Corpus(train=TRAIN, valid=TRAIN[:2], test=[])
    first, _ = encode(tmp_path, corpus, tokenizers)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["fingerprint.json"] + [
        f"{split}.{array}.npy" for split in ("test", "train", "valid")
        for array in ("src_ids", "src_offsets", "tgt_ids", "tgt_offsets")]
    again, _ = encode(tmp_path, corpus, tokenizers)
    assert again.reused
    assert np.array_equal(again.output.train.tgt_ids, first.output.train.tgt_ids)
    assert np.array_equal(again.output.train.src_offsets, first.output.train.src_offsets)

    other_max_len, _ = encode(tmp_path, corpus, tokenizers, max_len=12)
    assert not other_max_len.reused
    other_data, _ = encode(tmp_path, Corpus(train=TRAIN[:5], valid=TRAIN[:2], test=[]), tokenizers)
    assert not other_data.reused and len(other_data.output.train) == 5

    (tmp_path / "data" / "train.tgt_ids.npy").write_bytes(b"damaged")
    repaired, _ = encode(tmp_path, Corpus(train=TRAIN[:5], valid=TRAIN[:2], test=[]), tokenizers)
    assert not repaired.reused and len(repaired.output.train) == 5


def test_nothing_left_to_train_on_is_a_one_line_error(tmp_path, tokenizers):
    corpus = Corpus(train=[LONG], valid=TRAIN[:2], test=[])
    with pytest.raises(DataError, match=r"\[model\] max_len = 16: every training pair is longer"):
        encode(tmp_path, corpus, tokenizers)


# --- at scale: progress, files, memory-mapped arrays ----------------------------------------


def test_encoding_reports_progress_per_split_and_ends_with_the_exact_count(tmp_path, tokenizers,
                                                                          monkeypatch):
    import functools

    import engine.encode
    from engine.events import EncodeProgress
    from engine.progress import ProgressClock

    # chunks of 4 pairs, and an event after every chunk: the events a WMT14 run sees every
    # fifth of a second, on a corpus small enough for a test
    monkeypatch.setattr(engine.encode, "CHUNK", 4)
    monkeypatch.setattr(engine.encode, "ProgressClock", functools.partial(ProgressClock,
                                                                          interval=0.0))
    corpus = Corpus(train=TRAIN, valid=TRAIN[:2], test=[])
    _, events = encode(tmp_path, corpus, tokenizers)
    progress = [e for e in events if isinstance(e, EncodeProgress)]
    train = [e for e in progress if e.split == "train"]
    assert [e.done for e in train] == [4, 8, 12, 16, 20, 24, 28, 30]
    assert all(e.total == 30 and e.per_second > 0 for e in train)
    for e in train:  # the pairs left at the speed so far (to a tenth of a second)
        assert e.eta == pytest.approx((e.total - e.done) / e.per_second, abs=0.051)
    assert [(e.split, e.done, e.total) for e in progress if e.split != "train"] == [
        ("valid", 2, 2)]  # an empty split has nothing to report


def test_a_stop_during_encoding_leaves_no_cache_behind(tmp_path, tokenizers, monkeypatch):
    import engine.encode
    from engine.control import RunStopped
    from engine.events import EncodeProgress

    monkeypatch.setattr(engine.encode, "CHUNK", 4)
    control = RunControl()

    def stop_at_first_progress(event):
        if isinstance(event, EncodeProgress):
            control.stop()

    corpus = Corpus(train=TRAIN, valid=TRAIN[:2], test=[])
    with pytest.raises(RunStopped):
        run_encode_stage(corpus, tokenizers, 16, tmp_path, stop_at_first_progress, control)
    assert list((tmp_path / "data").iterdir()) == []  # no fingerprint, no arrays, no temp files


def test_pairs_from_the_corpus_files_give_the_same_ids_from_memory_mapped_arrays(tmp_path,
                                                                               tokenizers):
    from engine.data.corpus import write_pair_files
    from engine.encode import encode_pairs

    files = write_pair_files(TRAIN, tmp_path / "corpus", "en", "de")
    corpus = Corpus(train=files, valid=TRAIN[:2], test=[])
    assert corpus.fingerprint() == Corpus(train=TRAIN, valid=TRAIN[:2], test=[]).fingerprint()
    first, _ = encode(tmp_path / "run", corpus, tokenizers)
    again, _ = encode(tmp_path / "run", corpus, tokenizers)
    in_memory = encode_pairs(TRAIN, tokenizers.src, tokenizers.tgt, max_len=16)
    for result in (first, again):
        split = result.output.train
        assert isinstance(split.src_ids, np.memmap) and isinstance(split.tgt_offsets, np.memmap)
        for name in ("src_ids", "src_offsets", "tgt_ids", "tgt_offsets"):
            assert np.array_equal(getattr(split, name), getattr(in_memory, name)), name
        for i, (src, tgt) in enumerate(TRAIN):
            assert split.src(i).tolist() == tokenizers.src.encode(src).ids + [EOS_ID]
            assert split.tgt(i).tolist() == [BOS_ID] + tokenizers.tgt.encode(tgt).ids + [EOS_ID]
    assert not first.reused and again.reused


def test_the_cached_arrays_are_plain_npy_files(tmp_path, tokenizers):
    encode(tmp_path, Corpus(train=TRAIN, valid=TRAIN[:2], test=[]), tokenizers)
    ids = np.load(tmp_path / "data" / "train.src_ids.npy")  # any numpy reads them
    offsets = np.load(tmp_path / "data" / "train.src_offsets.npy")
    assert ids.dtype == np.int32 and offsets.dtype == np.int64
    assert len(offsets) == 31 and offsets[-1] == len(ids)
    assert ids[:offsets[1]].tolist() == tokenizers.src.encode(TRAIN[0][0]).ids + [EOS_ID]
