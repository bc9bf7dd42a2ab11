"""Search: greedy and beam search over a Transformer, batched over sentences, and ``translate``.

Both searches decode incrementally (``engine.model.DecoderCache``): each step runs the decoder on
one new position per hypothesis, not on the whole prefix. A sentence leaves the batch as soon as
its search is over, so a long sentence does not keep short ones computing.

Conventions (the same as the training data): the source is its tokens followed by ``</s>``, the
target starts with ``<s>``; returned ids hold neither ``<s>`` nor ``</s>``. The longest output
of a sentence is its source length (non-pad ids, ``</s>`` included) + ``max_len_offset`` tokens.
``<pad>`` and ``<s>`` are never produced.

Beam search follows tensor2tensor's scoring and fairseq's bookkeeping: log-probabilities add up
along a hypothesis; a finished hypothesis is ranked by ``score / lp(Y)`` with the GNMT length
penalty ``lp(Y) = ((5 + |Y|) / 6) ** alpha``, |Y| counting the generated tokens and ``</s>``.
Each step takes the 2k best extensions; those among the first k that end in ``</s>`` are
finished, the k best others stay alive. A sentence is done once it has k finished
hypotheses; at its length limit every alive hypothesis is finished as it stands. With k = 1 this
is exactly greedy search.
"""

from __future__ import annotations

import contextlib
import re
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.model import DecoderCache, Transformer
from engine.vocab import BOS_ID, EOS_ID, PAD_ID  # specials come first in every vocabulary


@contextlib.contextmanager
def _inference(model: Transformer) -> Iterator[None]:
    """Eval mode and no autograd for the duration; the model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _next_log_probs(logits: Tensor, bos_id: int, pad_id: int) -> Tensor:
    """log p(next token) in float32, with <pad> and <s> ruled out."""
    logp = F.log_softmax(logits.float(), dim=-1)
    logp[:, pad_id] = float("-inf")
    logp[:, bos_id] = float("-inf")
    return logp


def _length_limits(src: Tensor, pad_id: int, max_len_offset: int) -> Tensor:
    return src.ne(pad_id).sum(dim=1) + max_len_offset


def greedy_search(model: Transformer, src: Tensor, bos_id: int, eos_id: int, pad_id: int,
                  max_len_offset: int = 50) -> list[list[int]]:
    """The most probable next token at every step. ``src`` (B, S) ids -> B lists of ids."""
    with _inference(model):
        memory, src_pad = model.encode(src)
        limits = _length_limits(src, pad_id, max_len_offset)
        rows = torch.arange(src.size(0), device=src.device)  # original sentence of each row
        ys = torch.full((src.size(0), 1), bos_id, dtype=torch.long, device=src.device)
        cache = DecoderCache()
        results: list[list[int]] = [[] for _ in range(src.size(0))]
        while True:
            logits = model.decode(ys, memory, src_pad, cache)[:, -1]
            token = _next_log_probs(logits, bos_id, pad_id).argmax(dim=-1)
            ys = torch.cat([ys, token[:, None]], dim=1)
            done = token.eq(eos_id) | (ys.size(1) - 1 >= limits)
            if not done.any():
                continue
            for row in done.nonzero().flatten().tolist():
                ids = ys[row, 1:].tolist()
                results[int(rows[row])] = ids[:-1] if ids[-1] == eos_id else ids
            keep = (~done).nonzero().flatten()
            if keep.numel() == 0:
                return results
            ys, memory, src_pad, limits, rows = (t[keep] for t in (ys, memory, src_pad, limits,
                                                                   rows))
            cache.reorder(keep, keep)


def gnmt_penalty(length: int, alpha: float) -> float:
    """GNMT (Wu et al., 2016), as in tensor2tensor: ((5 + |Y|) / 6) ** alpha."""
    return ((5.0 + length) / 6.0) ** alpha


def beam_search(model: Transformer, src: Tensor, bos_id: int, eos_id: int, pad_id: int,
                beam: int = 4, length_penalty: float = 0.6, max_len_offset: int = 50,
                use_cache: bool = True) -> list[list[int]]:
    """The best of ``beam`` hypotheses per sentence (see the module's docstring).
    ``use_cache=False`` recomputes the whole prefix at every step: the same search, slower
    (for benchmarks/bench_decode.py)."""
    alpha, k = length_penalty, beam
    with _inference(model):
        device = src.device
        n = src.size(0)
        memory, src_pad = model.encode(src)  # one row per sentence, shared by its hypotheses
        limits = _length_limits(src, pad_id, max_len_offset)  # per sentence
        sentences = torch.arange(n, device=device)  # original index of each sentence still on
        seqs = torch.full((n * k, 1), bos_id, dtype=torch.long, device=device)
        scores = torch.full((n, k), float("-inf"), device=device)
        scores[:, 0] = 0.0  # all hypotheses start equal: expand only the first at step one
        cache = DecoderCache() if use_cache else None
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(n)]
        results: list[list[int]] = [[] for _ in range(n)]

        while True:
            length = seqs.size(1)  # tokens generated after this step, </s> included
            logits = model.decode(seqs, memory, src_pad, cache, last_only=True)[:, -1]
            vocab = logits.size(-1)
            candidates = scores[:, :, None] + _next_log_probs(logits, bos_id, pad_id).view(
                -1, k, vocab)
            top_scores, top_ids = candidates.view(-1, k * vocab).topk(2 * k, dim=1)
            origin, token = top_ids // vocab, top_ids % vocab  # which hypothesis, which token
            at_limit = limits.le(length)[:, None]
            is_eos = token.eq(eos_id)

            # finish: </s> among the first k, or everything at the length limit
            finishing = (is_eos | at_limit)[:, :k] & top_scores[:, :k].isfinite()
            for i, j in finishing.nonzero().tolist():
                row = i * k + origin[i, j].item()
                ids = seqs[row, 1:].tolist()
                if not is_eos[i, j]:
                    ids.append(token[i, j].item())
                normalised = top_scores[i, j].item() / gnmt_penalty(length, alpha)
                finished[i].append((normalised, ids))

            # stay alive: the k best extensions that do not end in </s>
            alive_scores = top_scores.masked_fill(is_eos, float("-inf"))
            scores, picked = alive_scores.topk(k, dim=1)
            origin, token = origin.gather(1, picked), token.gather(1, picked)
            rows = (torch.arange(seqs.size(0) // k, device=device)[:, None] * k + origin).view(-1)
            seqs = torch.cat([seqs[rows], token.view(-1, 1)], dim=1)

            done = torch.tensor([len(f) >= k for f in finished], device=device) | at_limit[:, 0]
            if done.any():
                for i in done.nonzero().flatten().tolist():
                    results[int(sentences[i])] = max(finished[i], key=lambda f: f[0])[1]
                keep = (~done).nonzero().flatten()
                if keep.numel() == 0:
                    return results
                keep_rows = (keep[:, None] * k + torch.arange(k, device=device)).view(-1)
                rows, seqs = rows[keep_rows], seqs[keep_rows]
                memory, src_pad = memory[keep], src_pad[keep]
                scores, limits, sentences = scores[keep], limits[keep], sentences[keep]
                finished = [finished[i] for i in keep.tolist()]
                if cache is not None:
                    cache.reorder(rows, keep)
            elif cache is not None:
                cache.reorder(rows)


def translate(model: Transformer, src_tokenizer, tgt_tokenizer, sentences: Sequence[str],
              beam: int = 4, length_penalty: float = 0.6, max_len_offset: int = 50,
              batch_size: int = 64, max_len: int | None = None,
              max_tokens: int | None = None) -> list[str]:
    """Translate plain-text sentences with ``tokenizers.Tokenizer`` objects; one output string
    per input, in input order.

    Each source is encoded without the tokenizer's own specials as ``tokens + [</s>]``. A source
    longer than ``max_len`` ids (default: the model's ``max_len``) is cut to its first
    ``max_len - 1`` tokens plus ``</s>``. An empty (or all-whitespace) line gives an empty
    output. Sentences are sorted by length into batches of ``batch_size``; with ``max_tokens``
    a batch also holds at most ``beam_sentences(...)`` of them (memory bounded by the knob a
    person tunes for training; see engine/fit.py). ``beam=1`` is greedy
    search. The model runs in eval mode and inference mode; its mode is restored afterwards.
    """
    max_len = max_len or model.max_len
    device = next(model.parameters()).device
    encoded = src_tokenizer.encode_batch(list(sentences), add_special_tokens=False)
    sources = [enc.ids[: max_len - 1] + [EOS_ID] for enc in encoded]
    outputs = [""] * len(sources)
    # an empty or all-whitespace line stays empty (its ids may be just a word-boundary mark)
    todo = sorted((i for i, ids in enumerate(sources) if sentences[i].strip() and len(ids) > 1),
                  key=lambda i: len(sources[i]))
    start = 0
    while start < len(todo):
        size = batch_size
        if max_tokens:  # the longest sentence of the batch sets its memory
            longest = len(sources[todo[min(start + batch_size, len(todo)) - 1]])
            size = min(batch_size, beam_sentences(max_tokens, beam, longest, max_len_offset))
        batch = todo[start:start + size]
        start += size
        width = max(len(sources[i]) for i in batch)
        src = torch.full((len(batch), width), PAD_ID, dtype=torch.long)
        for row, i in enumerate(batch):
            src[row, : len(sources[i])] = torch.tensor(sources[i])
        src = src.to(device)
        if beam == 1:
            hyps = greedy_search(model, src, BOS_ID, EOS_ID, PAD_ID, max_len_offset)
        else:
            hyps = beam_search(model, src, BOS_ID, EOS_ID, PAD_ID, beam=beam,
                               length_penalty=length_penalty, max_len_offset=max_len_offset)
        texts = tgt_tokenizer.decode_batch(hyps, skip_special_tokens=True)
        for i, text in zip(batch, texts):
            outputs[i] = text
    return outputs


def beam_sentences(max_tokens: int, beam: int, source_length: int, max_len_offset: int) -> int:
    """Sentences per beam-search batch so that hypotheses x positions (each hypothesis up to
    source length + offset long, its cache growing to that) stay under ``max_tokens``; >= 1."""
    return max(1, max_tokens // (max(beam, 1) * (source_length + max_len_offset)))


def corpus_bleu(hypotheses: list[str], references: list[str], lowercase: bool = False
                ) -> tuple[float, str]:
    """sacreBLEU on detokenized text (13a), cased or lowercased: (score, signature).

    Lowercased is how the Multi30k literature reports (Wu et al. 2021's 41.0, for one): its
    signature says ``case:lc``. Lowercasing forgives case errors, so it reads higher."""
    from sacrebleu.metrics import BLEU

    bleu = BLEU(lowercase=lowercase)
    score = bleu.corpus_score(hypotheses, [references])
    return score.score, str(bleu.get_signature())


# get_ende_bleu.sh (tensor2tensor) and compound_split_bleu.sh (fairseq): perl -ple
# 's{(\S)-(\S)}{$1 ##AT##-##AT## $2}g'
_COMPOUND = re.compile(r"(\S)-(\S)")


def split_compounds(tokenized: str) -> str:
    """``Computer-Tisch`` -> ``Computer ##AT##-##AT## Tisch``: each part of a hyphenated
    compound counts as a word, as in the paper's scoring scripts."""
    return _COMPOUND.sub(r"\1 ##AT##-##AT## \2", tokenized)


def paper_bleu(hypotheses: list[str], references: list[str]) -> tuple[float, str]:
    """BLEU as the paper's 27.3 (and tensor2tensor's, fairseq's) was computed: (score, signature).

    Hypotheses and references are tokenized (sacreBLEU's 13a tokenizer, mteval-v13a, which like
    Moses' tokenizer.perl keeps word-internal hyphens), hyphenated compounds are split
    (``##AT##-##AT##``), then BLEU is taken over those tokens, cased, without smoothing, as
    multi-bleu.perl does. Splitting compounds adds easy matches, so this reads higher than
    sacreBLEU (about 0.5-1 BLEU on newstest2014 En-De): compare it with papers, not with
    sacreBLEU scores.
    """
    from sacrebleu.metrics import BLEU
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    tokenize = Tokenizer13a()

    def prepare(lines: list[str]) -> list[str]:
        return [split_compounds(tokenize(line.strip())) for line in lines]

    bleu = BLEU(tokenize="none", smooth_method="none", force=True)  # tokenized on purpose
    score = bleu.corpus_score(prepare(hypotheses), [prepare(references)])
    signature = str(bleu.get_signature()).replace("tok:none", "tok:13a+compound-split")
    return score.score, signature
