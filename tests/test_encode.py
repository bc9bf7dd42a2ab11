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
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "fingerprint.json", "test.npz", "train.npz", "valid.npz"]
    again, _ = encode(tmp_path, corpus, tokenizers)
    assert again.reused
    assert np.array_equal(again.output.train.tgt_ids, first.output.train.tgt_ids)
    assert np.array_equal(again.output.train.src_offsets, first.output.train.src_offsets)

    other_max_len, _ = encode(tmp_path, corpus, tokenizers, max_len=12)
    assert not other_max_len.reused
    other_data, _ = encode(tmp_path, Corpus(train=TRAIN[:5], valid=TRAIN[:2], test=[]), tokenizers)
    assert not other_data.reused and len(other_data.output.train) == 5

    (tmp_path / "data" / "train.npz").write_bytes(b"damaged")
    repaired, _ = encode(tmp_path, Corpus(train=TRAIN[:5], valid=TRAIN[:2], test=[]), tokenizers)
    assert not repaired.reused and len(repaired.output.train) == 5


def test_nothing_left_to_train_on_is_a_one_line_error(tmp_path, tokenizers):
    corpus = Corpus(train=[LONG], valid=TRAIN[:2], test=[])
    with pytest.raises(DataError, match=r"\[model\] max_len = 16: every training pair is longer"):
        encode(tmp_path, corpus, tokenizers)
