"""Training-step speed: this engine's Transformer, eager and compiled (training.compile), versus
one built from ``torch.nn.Transformer``.

Both models get the same dimensions (default: the quick preset's), the same random batches,
the same loss (label-smoothed cross entropy ignoring padding: the engine's with engine/loss.py,
the reference with ``F.cross_entropy``) and the same optimizer (fused Adam 0.9/0.98/1e-9), in
float32 and under bfloat16 autocast. The engine's step is the run's own UpdateStep
(engine/train/step.py: forward, backward, the gradient norm, Adam, the schedule), as a training
run takes it; the reference's is the loop its documentation shows. Measurements are interleaved
(every round times each contender in turn, in a rotating order) and ratios are the median of
the per-round ratios, so a shared, noisy machine slows all of them alike. CPU time per step is
reported next to wall-clock time (with ``--threads 1`` it is immune to time-slicing). Model
FLOPs/s are counted from the matmuls of one training step (3x those of the forward pass) and
shown as a fraction of a large ``torch.matmul`` timed on this machine in the same dtype.

The compiled contender is the same UpdateStep with training.compile = true; its first steps
(the compile) are timed apart. Then an epoch of batches made as a run makes them (the run's
length-sorted batcher over sentence lengths drawn like a translation corpus's, widths rounded up
as a compiled run rounds them) goes through the compiled step, counting the graphs compiled on
the way (torch._dynamo's counters): the recompilations a run would see.

    python benchmarks/bench_train.py [--rounds 6] [--steps 3] [--threads 1] [--batch 128 --len 32]
                                     [--no-compile] [--epoch-sentences 2000 --max-tokens 4096]

Measured on the 2-core AMD EPYC (no AVX512-BF16/AMX; shared, load average 7.7), torch 2.13,
--d-model 128 --ffn 512 --heads 4 --layers 2 --vocab 2000 --batch 32 --len 32 --threads 1,
fp32: eager engine 929 tgt tok/s (0.139 CPU s/step), compiled 574 (0.226), nn.Transformer
586 (0.203): engine / reference 1.45x, compiled / engine 0.70x (0.65x CPU time); the compile
158 s wall, 1 graph; an epoch of 9 bucketed batches (--epoch-sentences 400 --max-tokens 1024):
1 recompilation. bf16 (--batch 16, load 8.4): eager 71 tok/s (0.905 CPU s/step), compiled 56
(0.924), nn.Transformer 53 (0.973): compiled / engine 0.93x (0.98x CPU time); its compile 415 s
wall. bf16 on this CPU is emulated: 96% of the eager bf16 step's self CPU time is
aten::mm/addmm (--profile), so "auto" precision picks fp32 here.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.batching import Batch, collate
from engine.batching import make_batches as run_batches
from engine.config import TrainingConfig
from engine.model import Transformer, sinusoids
from engine.train import NoamSchedule, TrainingState, UpdateGroup, UpdateStep
from engine.train.compiling import graph_count

PAD = 0


class ReferenceTransformer(nn.Module):
    """``torch.nn.Transformer`` as its documentation shows it: batch_first, its own shared
    embedding, sinusoidal positions and a tied output layer, masks passed the usual way."""

    def __init__(self, vocab: int, d_model: int, ffn_hidden: int, n_head: int, n_layers: int,
                 dropout: float, max_len: int) -> None:
        super().__init__()
        self.d_model = d_model
        self.embed = nn.Embedding(vocab, d_model)
        self.register_buffer("positions", sinusoids(max_len, d_model), persistent=False)
        self.core = nn.Transformer(d_model, n_head, n_layers, n_layers, ffn_hidden, dropout,
                                   batch_first=True)
        self.out = nn.Linear(d_model, vocab, bias=False)
        self.out.weight = self.embed.weight
        self.drop = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        def embed(ids):
            return self.drop(self.embed(ids) * math.sqrt(self.d_model)
                             + self.positions[: ids.size(1)])

        T = tgt_in.size(1)
        # boolean like the padding masks (True = may not attend), as the docs advise
        causal = torch.ones(T, T, dtype=torch.bool, device=tgt_in.device).triu(1)
        src_pad = src.eq(PAD)
        h = self.core(embed(src), embed(tgt_in), tgt_mask=causal, tgt_is_causal=True,
                      src_key_padding_mask=src_pad, tgt_key_padding_mask=tgt_in.eq(PAD),
                      memory_key_padding_mask=src_pad)
        return self.out(h)


def make_batches(n: int, batch: int, length: int, vocab: int, seed: int) -> list:
    """Random (src, tgt_in, tgt_out) batches; lengths vary as in a length-bucketed batch."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        src = torch.randint(4, vocab, (batch, length), generator=g)
        tgt = torch.randint(4, vocab, (batch, length + 1), generator=g)
        tgt[:, 0] = 2
        for row in range(batch):  # pad the tail of each row, up to 25% of it
            cut = length - int(torch.randint(0, length // 4 + 1, (1,), generator=g))
            src[row, cut:] = PAD
            cut = length - int(torch.randint(0, length // 4 + 1, (1,), generator=g))
            tgt[row, cut + 1:] = PAD
        batches.append((src, tgt[:, :-1].contiguous(), tgt[:, 1:].contiguous()))
    return batches


def engine_contender(model: Transformer, precision: str, d_model: int,
                     compiled: bool = False) -> UpdateStep:
    """The run's update step over ``model``, as the model stage sets it up (fused Adam, the
    paper's schedule, label smoothing 0.1, no clipping: the defaults of [training])."""
    optimizer = torch.optim.Adam(model.parameters(), lr=0.0, betas=(0.9, 0.98), eps=1e-9,
                                 fused=True)
    amp_dtype = torch.bfloat16 if precision == "bf16" else None
    state = TrainingState(model, optimizer, NoamSchedule(optimizer, d_model, 4000, 1.0), None,
                          torch.device("cpu"), precision, amp_dtype)
    return UpdateStep(state, TrainingConfig(compile=compiled))


class Lengths:
    """An encoded split's lengths, which is all collate reads of it besides the ids."""

    def __init__(self, n: int, max_len: int, vocab: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        # sentence lengths of a translation corpus: log-normal around ~22 tokens
        self.src_lengths = np.clip(rng.lognormal(3.0, 0.5, n), 3, max_len).astype(np.int64)
        ratio = rng.normal(1.05, 0.15, n)
        self.tgt_lengths = np.clip(self.src_lengths * ratio, 3, max_len).astype(np.int64) + 1
        self.ids = rng.integers(4, vocab, (n, max_len + 1))

    def src(self, i):
        return self.ids[i, :self.src_lengths[i]]

    def tgt(self, i):
        return self.ids[i, :self.tgt_lengths[i]]


def compile_epoch(step: UpdateStep, sentences: int, max_tokens: int, max_len: int,
                  vocab: int) -> tuple[int, int, float]:
    """(batches, graphs compiled, seconds) for one epoch of run-like batches through ``step``."""
    split = Lengths(sentences, max_len, vocab, seed=5)
    batches = run_batches(split.src_lengths, split.tgt_lengths - 1, max_tokens, seed=1)
    before, started = graph_count(), time.perf_counter()
    for rows in batches:
        batch = collate(split, rows, step.length_multiple)
        train_step(step, batch, "")
    return len(batches), graph_count() - before, time.perf_counter() - started


def engine_batch(batch) -> Batch:
    """The batch as the run's batches stage makes it (its target positions made on the host)."""
    src, tgt_in, tgt_out = batch
    return Batch(src, tgt_in, tgt_out, tokens=int(tgt_out.ne(PAD).sum()),
                 padded_tokens=src.numel() + tgt_in.numel())


def train_step(contender, batch, dtype) -> float:
    """One step: the engine's through its UpdateStep (padding left out before the output layer,
    engine/loss.py's loss); the reference's with ``F.cross_entropy`` as the docs show."""
    if isinstance(contender, UpdateStep):
        group = UpdateGroup()
        contender.add_batch(group, batch)
        _, nll = contender.finish(group)
        return nll / group.tokens
    model, optimizer = contender
    src, tgt_in, tgt_out = batch
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16"
                else contextlib.nullcontext())
    with autocast:
        logits = model(src, tgt_in)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt_out.reshape(-1),
                               ignore_index=PAD, label_smoothing=0.1)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def step_flops(batch: int, S: int, T: int, d: int, f: int, n_layers: int, vocab: int) -> float:
    """Matmul FLOPs of one training step (forward x 3), causal attention counted as half."""
    enc = 2 * S * d * 3 * d + 2 * S * d * d + 2 * 2 * S * S * d + 2 * 2 * S * d * f
    dec = (2 * T * d * 3 * d + 2 * T * d * d + 2 * 2 * T * T * d / 2   # self-attention
           + 2 * T * d * d + 2 * S * d * 2 * d + 2 * T * d * d + 2 * 2 * T * S * d  # cross
           + 2 * 2 * T * d * f)
    forward = batch * (n_layers * (enc + dec) + 2 * T * d * vocab)
    return 3 * forward


def matmul_flops(dtype: torch.dtype, n: int = 2048, repeats: int = 3) -> float:
    """FLOP/s of the fastest of a few large square matmuls."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--ffn", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--len", type=int, default=32, help="padded source and target length")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3, help="training steps per measurement")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--peak-size", type=int, default=2048,
                        help="side of the matmul timed for the peak (bf16 without AVX512-BF16 "
                             "or AMX is slow: a smaller one on such CPUs)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-compile", action="store_true", help="leave the compiled one out")
    parser.add_argument("--profile", action="store_true",
                        help="then the top 10 ops by self CPU time of the eager bf16 step")
    parser.add_argument("--epoch-sentences", type=int, default=2000,
                        help="sentences of the recompilation epoch, 0 = none")
    parser.add_argument("--max-tokens", type=int, default=4096,
                        help="training.max_tokens of the recompilation epoch")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    dims = dict(d_model=args.d_model, ffn_hidden=args.ffn, n_head=args.heads,
                n_layers=args.layers, dropout=0.1)
    batches = make_batches(4, args.batch, args.len, args.vocab, seed=1)
    names = ("engine", "reference") if args.no_compile else ("engine", "compiled", "reference")
    ours = [engine_batch(b) for b in batches]
    prepared = {"engine": ours, "compiled": ours, "reference": batches}
    tokens = sum(int(b[2].ne(PAD).sum()) for b in batches) / len(batches)
    flops = step_flops(args.batch, args.len, args.len, args.d_model, args.ffn, args.layers,
                       args.vocab)
    precisions = args.precisions.split(",")

    contenders = {}
    for precision in precisions:
        for name in names:
            torch.manual_seed(0)
            if name in ("engine", "compiled"):
                model = Transformer(args.vocab, args.vocab, max_len=args.len,
                                    share_embeddings=True, **dims)
                model.train()
                contenders[(name, precision)] = engine_contender(model, precision, args.d_model,
                                                                 compiled=name == "compiled")
                continue
            model = ReferenceTransformer(args.vocab, max_len=args.len + 1, **dims)
            model.train()
            # fused: one kernel over all parameters, ~4x faster than the default on CPU
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98),
                                         eps=1e-9, fused=True)
            contenders[(name, precision)] = (model, optimizer)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"batches {args.batch} x {args.len} (~{tokens:.0f} target tokens), "
          f"d_model {args.d_model}, ffn {args.ffn}, heads {args.heads}, "
          f"layers {args.layers}+{args.layers}, vocab {args.vocab}")
    models = {name: contenders[(name, precisions[0])] for name in ("engine", "reference")}
    models["engine"] = models["engine"].state.model
    models["reference"] = models["reference"][0]
    params = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}
    print(f"parameters: engine {params['engine']:,}, reference {params['reference']:,}")

    for (name, precision), contender in contenders.items():  # warm up (and compile)
        started, cpu_started, graphs = time.perf_counter(), time.process_time(), graph_count()
        for batch in prepared[name][:2]:
            train_step(contender, batch, precision)
        if name == "compiled":
            print(f"compiled {precision}: first two steps (the compile) "
                  f"{time.perf_counter() - started:.1f} s wall, "
                  f"{time.process_time() - cpu_started:.1f} s CPU, "
                  f"{graph_count() - graphs} graphs (CPU time: this process's; the compiler's "
                  "worker processes are not counted)")

    # wall-clock seconds per step, and CPU seconds per step: on a machine shared with other
    # work, CPU time counts only the time this process actually ran (exact with --threads 1;
    # with more threads, threads waiting for a descheduled partner add to it)
    wall: dict[tuple[str, str], list[float]] = {key: [] for key in contenders}
    cpu: dict[tuple[str, str], list[float]] = {key: [] for key in contenders}
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {precision: 0.0 for precision in precisions}
    order = list(contenders)
    load_before = os.getloadavg()[0]
    for _ in range(args.rounds):
        for precision in precisions:  # the peak too is the best over the rounds
            peaks[precision] = max(peaks[precision],
                                   matmul_flops(dtypes[precision], args.peak_size))
        order = order[1:] + order[:1]  # rotate, so no contender always runs first
        for key in order:
            contender, own = contenders[key], prepared[key[0]]
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            for i in range(args.steps):
                train_step(contender, own[i % len(own)], key[1])
            wall[key].append((time.perf_counter() - start_wall) / args.steps)
            cpu[key].append((time.process_time() - start_cpu) / args.steps)

    print(f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after; "
          f"{args.rounds} rounds of {args.steps} steps each")
    print(f"matmul peak ({args.peak_size} x {args.peak_size}, best of the rounds): " + ", ".join(
        f"{precision} {peak / 1e9:.0f} GFLOP/s" for precision, peak in peaks.items()))
    print(f"\n{'model':<10} {'precision':<9} {'s/step':>7} {'tgt tok/s':>10} {'best':>7} "
          f"{'cpu s/step':>10} {'GFLOP/s':>8} {'of peak':>8}")
    speed = {}
    for key in contenders:
        step = statistics.median(wall[key])
        speed[key] = tokens / step
        achieved = flops / min(wall[key])  # best round, like the peak it is compared with
        print(f"{key[0]:<10} {key[1]:<9} {step:>7.3f} {speed[key]:>10.0f} "
              f"{tokens / min(wall[key]):>7.0f} {statistics.median(cpu[key]):>10.3f} "
              f"{achieved / 1e9:>8.1f} {achieved / peaks[key[1]]:>7.1%}")
    print("(s/step, tgt tok/s, cpu s/step: median round; best, GFLOP/s, of peak: best round; "
          f"{flops / 1e9:.0f} GFLOP of matmuls per step)")

    def ratio(engine_key, reference_key) -> str:
        # per round (the two were timed moments apart), then the median over the rounds
        def median_ratio(times):
            return statistics.median(r / e for e, r in zip(times[engine_key],
                                                            times[reference_key]))
        per_round = [r / e for e, r in zip(wall[engine_key], wall[reference_key])]
        return (f"{median_ratio(wall):.2f}x wall-clock (rounds {min(per_round):.2f}-"
                f"{max(per_round):.2f}x), {median_ratio(cpu):.2f}x CPU time")

    print()
    for precision in precisions:
        print(f"{precision}: engine / reference = "
              f"{ratio(('engine', precision), ('reference', precision))}")
        if "compiled" in names:
            print(f"{precision}: compiled / reference = "
                  f"{ratio(('compiled', precision), ('reference', precision))}")
            print(f"{precision}: compiled / engine = "
                  f"{ratio(('compiled', precision), ('engine', precision))}")
    best = {name: max(precisions, key=lambda p: speed[(name, p)])
            for name in ("engine", "reference")}
    print(f"faster precision of each (engine {best['engine']}, reference {best['reference']}): "
          f"{ratio(('engine', best['engine']), ('reference', best['reference']))}; "
          "target >= 1.3x")

    if args.profile and ("engine", "bf16") in contenders:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for i in range(args.steps):
                train_step(contenders[("engine", "bf16")], ours[i % len(ours)], "bf16")
        print("\nthe eager bf16 step, top 10 ops by self CPU time:")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))

    if "compiled" in names and args.epoch_sentences:
        step = contenders[("compiled", precisions[-1])]
        count, graphs, seconds = compile_epoch(step, args.epoch_sentences, args.max_tokens,
                                               args.len, args.vocab)
        print(f"\nan epoch of {count} run-like batches ({args.epoch_sentences} sentences, "
              f"max_tokens {args.max_tokens}, lengths up to {args.len}, widths rounded to "
              f"{step.length_multiple}) through the compiled {precisions[-1]} step: "
              f"{graphs} recompilations, {seconds:.1f} s")


if __name__ == "__main__":
    main()
