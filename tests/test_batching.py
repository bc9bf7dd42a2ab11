"""Batches: under max_tokens, every pair once, little padding, an order fixed by seed and epoch."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from engine.batching import (
    Batches,
    collate,
    decoder_lengths,
    make_batches,
    padding_efficiency,
    run_batches_stage,
)
from engine.config import config_from_dict
from engine.encode import EncodedSplit, encode_pairs
from engine.errors import ConfigError

MULTI30K = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "multi30k").resolve()


def split_from_rows(src_rows, tgt_rows):
    def flat(rows):
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([len(r) for r in rows], out=offsets[1:])
        return np.array([i for r in rows for i in r], dtype=np.int32), offsets

    return EncodedSplit(*flat(src_rows), *flat(tgt_rows))


def random_lengths(n, seed):
    rng = np.random.default_rng(seed)
    src = rng.integers(2, 60, n)
    tgt = np.clip(src + rng.integers(-8, 9, n), 3, 70)  # targets track their sources, loosely
    return src, tgt


def test_every_pair_lands_in_exactly_one_batch_under_max_tokens():
    src, tgt = random_lengths(5000, seed=3)
    batches = make_batches(src, tgt, max_tokens=1000, seed=1)
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(5000))
    for b in batches:
        assert len(b) * src[b].max() <= 1000 and len(b) * tgt[b].max() <= 1000
    assert padding_efficiency(batches, src, tgt) > 0.9


def test_batch_order_depends_only_on_the_seed_and_the_epoch():
    src, tgt = random_lengths(2000, seed=4)
    batches = Batches(train=make_batches(src, tgt, 500, seed=7), valid=[], seed=7)
    np.random.seed(123), torch.manual_seed(123)  # global generators play no part
    first = batches.epoch_order(1)
    np.random.seed(999), torch.manual_seed(999)
    assert np.array_equal(batches.epoch_order(1), first)
    assert not np.array_equal(batches.epoch_order(2), first)
    assert sorted(first.tolist()) == list(range(len(batches.train)))
    rebuilt = make_batches(src, tgt, 500, seed=7)  # the batches themselves are reproducible
    assert all(np.array_equal(a, b) for a, b in zip(rebuilt, batches.train))
    other_seed = Batches(train=batches.train, valid=[], seed=8)
    assert not np.array_equal(other_seed.epoch_order(1), first)


def test_collate_pads_and_shifts_the_target():
    split = split_from_rows([[5, 6, 7, 3], [8, 3]], [[2, 9, 10, 3], [2, 11, 12, 13, 3]])
    batch = collate(split, np.array([0, 1]))
    assert batch.src.tolist() == [[5, 6, 7, 3], [8, 3, 0, 0]]
    assert batch.tgt_in.tolist() == [[2, 9, 10, 0], [2, 11, 12, 13]]
    assert batch.tgt_out.tolist() == [[9, 10, 3, 0], [11, 12, 13, 3]]
    assert batch.tokens == 7 and batch.padded_tokens == 8 + 8
    assert batch.src.dtype == torch.int64


def test_max_tokens_below_the_longest_sentence_is_a_one_line_error():
    with pytest.raises(ConfigError, match=r"max_tokens = 20 is smaller than the longest sentence "
                                          r"\(30 tokens\)"):
        make_batches(np.array([5, 30]), np.array([5, 6]), max_tokens=20, seed=1)


def test_the_stage_reports_batches_per_epoch_and_padding_efficiency(tmp_path):
    from engine.encode import EncodedData

    src, tgt = random_lengths(300, seed=5)
    split = split_from_rows([[4] * int(n) for n in src], [[2] + [4] * int(n) for n in tgt])
    data = EncodedData(train=split, valid=split, test=split, fingerprint="x")
    config = config_from_dict({"training": {"max_tokens": 400, "seed": 3}})
    result = run_batches_stage(data, config.training)
    assert result.info["batches_per_epoch"] == len(result.output.train) > 1
    expected = padding_efficiency(result.output.train, src, decoder_lengths(split))
    assert result.info["padding_efficiency"] == round(expected, 3)
    assert result.output.seed == 3


@pytest.mark.skipif(not (MULTI30K / "train.en.gz").is_file(),
                    reason=f"Multi30k not found at {MULTI30K}")
def test_multi30k_batches_waste_under_a_tenth_on_padding():
    def lines(name):
        with gzip.open(MULTI30K / name, "rt", encoding="utf-8") as f:
            return f.read().splitlines()

    pairs = list(zip(lines("train.en.gz"), lines("train.de.gz")))
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator([s for p in pairs for s in p], trainers.BpeTrainer(
        vocab_size=8000, special_tokens=["<pad>", "<unk>", "<s>", "</s>"], show_progress=False))
    split = encode_pairs(pairs, tok, tok, max_len=256)
    src, tgt = split.src_lengths, decoder_lengths(split)
    for max_tokens in (2048, 4096, 8192):
        batches = make_batches(src, tgt, max_tokens, seed=1)
        assert padding_efficiency(batches, src, tgt) >= 0.9, max_tokens
