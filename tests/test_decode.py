"""Search and translation: a model that learned to copy decodes correctly, greedy and beam agree
where they must, beam search finds what exhaustive search finds, translate() survives bad lines."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from engine.decode import beam_search, gnmt_penalty, greedy_search, translate
from engine.model import Transformer
from engine.vocab import BOS_ID as BOS
from engine.vocab import EOS_ID as EOS
from engine.vocab import PAD_ID as PAD
from engine.vocab import UNK_ID as UNK

SENTENCES = [
    "the cat sat on the mat",
    "a dog runs in the park",
    "two men are playing football",
    "the girl reads a book",
    "a woman rides a red bike",
    "children play in the snow",
    "the man cooks dinner",
    "a boy jumps into the water",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def batch_of(sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sources ``ids </s>`` and targets ``<s> ids </s>``, padded."""
    width = max(len(s) for s in sequences) + 2
    src = torch.full((len(sequences), width - 1), PAD)
    tgt = torch.full((len(sequences), width), PAD)
    for i, ids in enumerate(sequences):
        src[i, : len(ids) + 1] = torch.tensor(ids + [EOS])
        tgt[i, : len(ids) + 2] = torch.tensor([BOS] + ids + [EOS])
    return src, tgt


def train_to_copy(sequences: list[list[int]], vocab: int, steps: int) -> Transformer:
    # one thread: float sums then run in one order, so the trained weights do not depend on
    # how many cores this machine has (with two, one of 48 sequences was not yet learned)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = Transformer(vocab, vocab, d_model=64, ffn_hidden=128, n_head=4, n_layers=1,
                        dropout=0.1, max_len=16, share_embeddings=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.98), eps=1e-9)
    src, tgt = batch_of(sequences)
    model.train()
    for _ in range(steps):
        logits = model(src, tgt[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, vocab), tgt[:, 1:].reshape(-1),
                               ignore_index=PAD)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture(scope="module")
def copy_task():
    """48 sequences of distinct ids from a vocabulary of 16, and a model trained to copy them."""
    g = torch.Generator().manual_seed(1)
    sequences = [(torch.randperm(12, generator=g)[: int(torch.randint(1, 7, (1,), generator=g))]
                  + 4).tolist() for _ in range(48)]
    return sequences, train_to_copy(sequences, vocab=16, steps=400)


@pytest.fixture(scope="module")
def random_model():
    torch.manual_seed(3)
    return Transformer(30, 30, d_model=32, ffn_hidden=64, n_head=4, n_layers=2, max_len=16,
                       share_embeddings=True).eval()


def random_sources(n: int = 6, vocab: int = 30, seed: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 9, (n,), generator=g).tolist()
    src, _ = batch_of([torch.randint(4, vocab, (n_,), generator=g).tolist() for n_ in lengths])
    return src


def test_a_tiny_model_learns_to_copy_and_greedy_search_decodes_it(copy_task):
    sequences, model = copy_task
    src, _ = batch_of(sequences)
    assert greedy_search(model, src, BOS, EOS, PAD, max_len_offset=5) == sequences


def test_beam_search_decodes_the_copy_task_too(copy_task):
    sequences, model = copy_task
    src, _ = batch_of(sequences)
    assert beam_search(model, src, BOS, EOS, PAD, beam=4, max_len_offset=5) == sequences


def test_beam_of_one_is_greedy_search(copy_task, random_model):
    sequences, model = copy_task
    src, _ = batch_of(sequences)
    assert (beam_search(model, src, BOS, EOS, PAD, beam=1, max_len_offset=5)
            == greedy_search(model, src, BOS, EOS, PAD, max_len_offset=5))
    # an untrained model wanders: long outputs, sentences finishing at different steps
    src = random_sources(12)
    greedy = greedy_search(random_model, src, BOS, EOS, PAD, max_len_offset=8)
    assert len({len(ids) for ids in greedy}) > 1
    assert beam_search(random_model, src, BOS, EOS, PAD, beam=1, max_len_offset=8) == greedy


def test_cached_beam_search_gives_the_same_outputs_as_recomputing(random_model):
    src = random_sources(8)
    cached = beam_search(random_model, src, BOS, EOS, PAD, beam=4, max_len_offset=8)
    recomputed = beam_search(random_model, src, BOS, EOS, PAD, beam=4, max_len_offset=8,
                             use_cache=False)
    assert cached == recomputed


def test_outputs_end_within_the_length_limit_and_never_hold_specials(random_model):
    src = random_sources(10)
    limits = src.ne(PAD).sum(dim=1).tolist()
    for search in (lambda: greedy_search(random_model, src, BOS, EOS, PAD, max_len_offset=3),
                   lambda: beam_search(random_model, src, BOS, EOS, PAD, beam=3,
                                       max_len_offset=3)):
        outputs = search()
        assert len(outputs) == 10
        for ids, limit in zip(outputs, limits):
            assert len(ids) <= limit + 3
            assert not {PAD, BOS, EOS} & set(ids)


def test_search_leaves_the_model_in_the_mode_it_found(copy_task):
    _, model = copy_task
    model.train()
    greedy_search(model, torch.tensor([[5, EOS]]), BOS, EOS, PAD)
    assert model.training
    model.eval()


def test_gnmt_length_penalty():
    assert gnmt_penalty(1, 0.6) == 1.0
    assert gnmt_penalty(7, 0.6) == pytest.approx(2.0 ** 0.6)
    assert gnmt_penalty(30, 0.0) == 1.0


def sequence_score(model, src, ids, alpha):
    """log p(ids) by teacher forcing, over the length penalty, <pad> and <s> excluded as in
    the search."""
    tgt = torch.tensor([[BOS] + ids])
    with torch.inference_mode():
        logp = F.log_softmax(model.eval()(src, tgt)[0].float(), dim=-1)
    total = sum(logp[i, t].item() for i, t in enumerate(ids))
    return total / gnmt_penalty(len(ids), alpha)


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_a_beam_wide_enough_finds_the_best_sequence_exhaustive_search_finds(alpha):
    # vocabulary of 8: 6 producible ids (<unk>, </s> and 4 words); at most 3 output tokens
    torch.manual_seed(7)
    model = Transformer(8, 8, d_model=16, ffn_hidden=32, n_head=2, n_layers=1, max_len=8,
                        share_embeddings=True).eval()
    src = torch.tensor([[5, EOS], [6, EOS]])  # 2 tokens + offset 1: at most 3 tokens out
    words = [UNK, 4, 5, 6, 7]
    candidates = [list(p) + [EOS] for n in range(3) for p in itertools.product(words, repeat=n)]
    candidates += [list(p) for p in itertools.product(words, repeat=3)]  # cut at the limit
    expected = []
    for row in src:
        best = max(candidates, key=lambda ids: sequence_score(model, row[None], ids, alpha))
        expected.append(best[:-1] if best[-1] == EOS else best)
    found = beam_search(model, src, BOS, EOS, PAD, beam=200, length_penalty=alpha,
                        max_len_offset=1)
    assert found == expected


# --- translate --------------------------------------------------------------------------------


def bpe_tokenizer(texts: list[str], vocab_size: int = 120) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=["<pad>", "<unk>", "<s>", "</s>"])
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


@pytest.fixture(scope="module")
def copy_translator():
    """A real BPE tokenizer and a model that learned to 'translate' these sentences into
    themselves."""
    tokenizer = bpe_tokenizer(SENTENCES)
    assert [tokenizer.token_to_id(t) for t in ("<pad>", "<unk>", "<s>", "</s>")] == [0, 1, 2, 3]
    ids = [enc.ids for enc in tokenizer.encode_batch(SENTENCES, add_special_tokens=False)]
    model = train_to_copy(ids, vocab=tokenizer.get_vocab_size(), steps=200)
    return tokenizer, model


def test_translate_returns_each_translation_in_input_order(copy_translator):
    tokenizer, model = copy_translator
    lines = [SENTENCES[5], SENTENCES[0], SENTENCES[3], SENTENCES[2], SENTENCES[7]]
    assert translate(model, tokenizer, tokenizer, lines, beam=4, batch_size=2) == lines
    assert translate(model, tokenizer, tokenizer, lines, beam=1, batch_size=3) == lines


def test_translate_an_empty_line_gives_an_empty_line(copy_translator):
    tokenizer, model = copy_translator
    out = translate(model, tokenizer, tokenizer, ["", SENTENCES[1], "   "])
    assert out == ["", SENTENCES[1], ""]


def test_translate_cuts_a_line_longer_than_max_len_instead_of_failing(copy_translator):
    tokenizer, model = copy_translator
    very_long = " ".join(SENTENCES * 40)  # far beyond the model's 16 positions
    assert len(tokenizer.encode(very_long).ids) > 10 * model.max_len
    out = translate(model, tokenizer, tokenizer, [very_long, SENTENCES[4]], max_len_offset=10)
    assert out[1] == SENTENCES[4]
    assert isinstance(out[0], str)
    assert len(tokenizer.encode(out[0]).ids) <= model.max_len + 10


def test_translate_with_unknown_characters_still_answers(copy_translator):
    tokenizer, model = copy_translator
    (out,) = translate(model, tokenizer, tokenizer, ["the 猫 sat on the mat ☃"])
    assert isinstance(out, str)


def test_paper_bleu_splits_hyphenated_compounds_as_get_ende_bleu_sh():
    from engine.decode import corpus_bleu, paper_bleu, split_compounds

    # perl -ple 's{(\S)-(\S)}{$1 ##AT##-##AT## $2}g', matches not overlapping, as in perl
    assert split_compounds("ein Computer-Tisch , 3-4 a-b-c x - y") == (
        "ein Computer ##AT##-##AT## Tisch , 3 ##AT##-##AT## 4 a ##AT##-##AT## b-c x - y")
    references = ["Ein Mann sitzt an einem Computer-Tisch.", "Zwei Hunde spielen im Schnee."]
    hypotheses = ["Ein Mann sitzt am Computer-Tisch.", "Zwei Hunde spielen im Schnee."]
    sacre, sacre_signature = corpus_bleu(hypotheses, references)
    paper, paper_signature = paper_bleu(hypotheses, references)
    # the compound's parts are matches of their own: the paper's way reads higher
    assert paper > sacre > 0
    assert "tok:13a+compound-split" in paper_signature and "smooth:none" in paper_signature
    assert "tok:13a|" in sacre_signature
    # the same BLEU as scoring pre-split tokens by hand
    from sacrebleu.metrics import BLEU

    by_hand = BLEU(tokenize="none", smooth_method="none").corpus_score(
        ["Ein Mann sitzt am Computer ##AT##-##AT## Tisch .", "Zwei Hunde spielen im Schnee ."],
        [["Ein Mann sitzt an einem Computer ##AT##-##AT## Tisch .",
          "Zwei Hunde spielen im Schnee ."]])
    assert paper == pytest.approx(by_hand.score)
    assert paper_bleu(references, references)[0] == pytest.approx(100.0)


def test_lowercased_bleu_forgives_case_and_says_so_in_its_signature():
    from engine.decode import corpus_bleu

    references = ["Ein Mann sitzt an einem Tisch.", "Zwei Hunde spielen im Schnee."]
    hypotheses = ["ein mann sitzt an einem tisch.", "Zwei Hunde spielen im Schnee."]
    cased, cased_signature = corpus_bleu(hypotheses, references)
    lower, lower_signature = corpus_bleu(hypotheses, references, lowercase=True)
    assert lower == pytest.approx(100.0) and cased < 70
    assert "case:lc" in lower_signature and "tok:13a" in lower_signature
    assert "case:mixed" in cased_signature
