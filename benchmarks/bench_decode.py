"""Beam search speed: incremental decoding (cached keys/values) versus recomputing the prefix.

A small model (the sample preset's dimensions by default) is first trained for a short while on
a synthetic task, "translate" a sentence of word ids into the next id of each word, so that it
stops at about the source length as a trained translator does (an untrained model runs to the
length limit, which would flatter the cache). Then the same few hundred source sentences are
decoded with beam 4 both ways, interleaved over rounds; outputs must be identical.

    python benchmarks/bench_decode.py [--sentences 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from engine.decode import beam_search
from engine.model import Transformer

PAD, BOS, EOS = 0, 2, 3


def make_pairs(n: int, vocab: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Sources ``w1..wn </s>`` and targets ``<s> w1+1..wn+1 </s>``, 5 to 25 words."""
    lengths = torch.randint(5, 26, (n,), generator=g).tolist()
    width = max(lengths) + 2
    src = torch.full((n, width - 1), PAD)
    tgt = torch.full((n, width), PAD)
    for i, length in enumerate(lengths):
        words = torch.randint(4, vocab - 1, (length,), generator=g)
        src[i, : length + 1] = torch.cat([words, torch.tensor([EOS])])
        tgt[i, : length + 2] = torch.cat([torch.tensor([BOS]), words + 1, torch.tensor([EOS])])
    return src, tgt


def train(model: Transformer, vocab: int, steps: int, g: torch.Generator) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-9)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 50))
    model.train()
    for _ in range(steps):
        src, tgt = make_pairs(64, vocab, g)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(src, tgt[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, vocab).float(), tgt[:, 1:].reshape(-1),
                                   ignore_index=PAD)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        warmup.step()
    return loss.item()


def decode_all(model, sources: torch.Tensor, batch_size: int, use_cache: bool) -> list:
    outputs = []
    for start in range(0, sources.size(0), batch_size):
        src = sources[start:start + batch_size]
        src = src[:, : int(src.ne(PAD).sum(1).max())]  # trim the batch's padding columns
        outputs += beam_search(model, src, BOS, EOS, PAD, beam=4, length_penalty=0.6,
                               max_len_offset=50, use_cache=use_cache)
    return outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--ffn", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=100)
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--sentences", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads while decoding (training the model uses one)")
    args = parser.parse_args()

    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = Transformer(args.vocab, args.vocab, d_model=args.d_model, ffn_hidden=args.ffn,
                        n_head=args.heads, n_layers=args.layers, dropout=0.1, max_len=64,
                        share_embeddings=True)
    start = time.perf_counter()
    torch.set_num_threads(1)  # a small model trains fastest on one thread of a busy machine
    loss = train(model, args.vocab, args.train_steps, g)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; model d_model "
          f"{args.d_model}, ffn {args.ffn}, heads {args.heads}, layers {args.layers}+"
          f"{args.layers}, vocab {args.vocab}; trained {args.train_steps} steps in "
          f"{time.perf_counter() - start:.0f}s, last loss {loss:.3f}")

    sources, targets = make_pairs(args.sentences, args.vocab, g)
    order = sources.ne(PAD).sum(1).argsort()  # length-sorted batches, as translate() makes
    sources, targets = sources[order], targets[order]
    model.eval()
    decode_all(model, sources[: args.batch_size], args.batch_size, True)  # warm up

    seconds = {True: [], False: []}  # wall-clock
    cpu = {True: [], False: []}  # CPU time: only while this process ran (shared machine)
    outputs = {}
    load_before = os.getloadavg()[0]
    for _ in range(args.rounds):
        for use_cache in (True, False):
            start, start_cpu = time.perf_counter(), time.process_time()
            outputs[use_cache] = decode_all(model, sources, args.batch_size, use_cache)
            seconds[use_cache].append(time.perf_counter() - start)
            cpu[use_cache].append(time.process_time() - start_cpu)
    assert outputs[True] == outputs[False], "cached and recomputed beam search disagree"

    references = [[t for t in row.tolist() if t not in (PAD, BOS, EOS)] for row in targets]
    exact = sum(o == r for o, r in zip(outputs[True], references)) / len(references)
    src_len = sources.ne(PAD).sum().item() / len(references)
    out_len = sum(len(o) for o in outputs[True]) / len(references)
    print(f"{args.sentences} sentences, beam 4, alpha 0.6, batches of {args.batch_size}; "
          f"mean source {src_len:.1f} tokens, mean output {out_len:.1f} tokens, "
          f"{exact:.0%} exactly right; outputs identical both ways: yes")
    print(f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"\n{'search':<12} {'seconds':>8} {'sentences/s':>12} {'cpu seconds':>12}")
    for use_cache, name in ((True, "cached"), (False, "recompute")):
        median = statistics.median(seconds[use_cache])
        print(f"{name:<12} {median:>8.2f} {args.sentences / median:>12.1f} "
              f"{statistics.median(cpu[use_cache]):>12.2f}")
    per_round = [r / c for c, r in zip(seconds[True], seconds[False])]
    per_round_cpu = [r / c for c, r in zip(cpu[True], cpu[False])]
    print(f"\ncached / recompute speed-up: {statistics.median(per_round):.2f}x wall-clock "
          f"(median of {args.rounds} rounds, {min(per_round):.2f}-{max(per_round):.2f}x), "
          f"{statistics.median(per_round_cpu):.2f}x CPU time; target >= 3x")


if __name__ == "__main__":
    main()
