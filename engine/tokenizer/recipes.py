"""Tokenizer recipes: what a BPE or WordPiece tokenizer is made of, trained with HF `tokenizers`.

The child process (engine/tokenizer/child.py) and benchmarks/bench_tokenizer.py train with
exactly these functions.

- bpe: a Metaspace pre-tokenizer marks word starts with "▁" (as SentencePiece does), then
  punctuation is split off; the Metaspace decoder turns ids back into the original spacing. No
  end-of-word suffix and no continuing-subword prefix: `tokenizers` breaks ties between equally
  frequent pairs by token id, and with those affixes the affixed symbols ("##x", "x</w>") get
  their ids in hash-map order, which changes from process to process. Without them the ids are
  the sorted alphabet's, and the result is the same tokenizer.json in every process.
- wordpiece: what HF's WordPieceTrainer does, done in the open: train BPE with the "##"
  continuing-subword prefix (BERT's pre-tokenizer), then keep only the vocabulary in a WordPiece
  model. (We call BpeTrainer ourselves because WordPieceTrainer ignores progress_format.) The
  "##" prefix brings back the hash-order tie-breaking: the vocabulary size, the special tokens and
  the alphabet are the same in every process, but a few tokens chosen among tied pairs may differ.

Special tokens (engine/vocab.py) have ids 0-3 in every tokenizer. No post-processor: the encode
stage adds ``</s>`` (source) and ``<s> ... </s>`` (target) itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from engine.errors import ConfigError
from engine.vocab import SPECIALS

RECIPE = 2  # bump when new_tokenizer/new_trainer change, so old tokenizers are not reused

# Splitting punctuation off words buys BLEU: on Multi30k (the same 4+4-layer d_model 128 run,
# seed 1), validation sacreBLEU 30.30 with it and 27.38 without (then "couch." is one word, and
# BPE spends merges on "h." and the like). Recipe 1 split it with a second pre-tokenizer,
# Punctuation, after Metaspace: 1.47x the wall time and 1.54x the CPU time of Metaspace alone
# (1M+1M sentences, joint BPE 37,000, `tokenizers` from files, 2-core AMD EPYC). Here Metaspace
# only puts "▁" before each word (split=False) and one regex makes the pieces: a word with its
# "▁", a punctuation mark alone, or the rest of a word after a mark. The same pieces and offsets
# as recipe 1 (tests/test_tokenizer.py checks every Multi30k line), so the same tokenizer.json
# model, at 1.01x the wall time of Metaspace alone (1.04x CPU): benchmarks/bench_tokenizer.py
# --recipe-cost.
PUNCTUATION = r"\p{P}$+<=>^`|~"  # as tokenizers' Punctuation: Unicode P*, and ASCII's symbols
WORD_OR_MARK = Regex(rf"▁[^▁{PUNCTUATION}]*|[{PUNCTUATION}]|[^▁{PUNCTUATION}]+")


def new_tokenizer(kind: str) -> Tokenizer:
    """An untrained tokenizer of the given kind (training always starts from a BPE model)."""
    if kind == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Metaspace(split=False),
             pre_tokenizers.Split(WORD_OR_MARK, behavior="isolated")])
        tokenizer.decoder = decoders.Metaspace()
    elif kind == "wordpiece":
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>", continuing_subword_prefix="##"))
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece(prefix="##")
    else:
        raise ConfigError(f"[tokenizer] kind = {kind!r}: must be one of bpe, wordpiece")
    return tokenizer


def new_trainer(kind: str, vocab_size: int, min_frequency: int,
                progress: bool = False) -> trainers.BpeTrainer:
    options: dict[str, Any] = {"continuing_subword_prefix": "##"} if kind == "wordpiece" else {}
    if progress:  # JSON lines on stderr (tokenizers >= 0.23); they print even without show_progress
        options["progress_format"] = "json"
    return trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                               special_tokens=SPECIALS, show_progress=progress, **options)


def finish_training(tokenizer: Tokenizer, kind: str) -> Tokenizer:
    """WordPiece keeps only the vocabulary of the BPE it was trained as (HF's from_bpe)."""
    if kind == "wordpiece":
        tokenizer.model = models.WordPiece(vocab=tokenizer.get_vocab(), unk_token="<unk>",
                                           continuing_subword_prefix="##")
    return tokenizer


def train_in_process(sentences: Iterable[str] | Iterable[list[str]], kind: str, vocab_size: int,
                     min_frequency: int, progress: bool = False) -> Tokenizer:
    """The bare library call; the child process runs exactly this."""
    tokenizer = new_tokenizer(kind)
    tokenizer.train_from_iterator(sentences, new_trainer(kind, vocab_size, min_frequency, progress))
    return finish_training(tokenizer, kind)



def train_from_files(files: list[Path], kind: str, vocab_size: int, min_frequency: int,
                     progress: bool = False) -> Tokenizer:
    """The bare library call on text files, one sentence a line; the child process runs this.

    The library keeps each line's newline (``train_from_iterator`` never sees one), and the
    Metaspace pre-tokenizer would make it part of the last word. A normalizer that removes it,
    set for training only, makes the result the same tokenizer.json as ``train_in_process`` on
    the same sentences.
    """
    tokenizer = new_tokenizer(kind)
    tokenizer.normalizer = normalizers.Replace("\n", "")
    tokenizer.train([str(path) for path in files],
                    new_trainer(kind, vocab_size, min_frequency, progress))
    tokenizer.normalizer = None
    return finish_training(tokenizer, kind)
