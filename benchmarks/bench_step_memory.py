"""Peak memory of one training step: the engine's lean loss versus the loss it replaced.

"before" is the previous step, kept here as the peer: logits for every position, padding
included, then ``log_softmax(logits.float())``, the non-pad rows picked out, NLL and smoothing
from them. "after" is the engine's step (engine/train/step.py): padding left out before the output
layer, engine/loss.py's chunked loss. Same model, same batch, same optimizer. Each step runs in
a fresh child process, so the peaks do not mix; the peak is the child's peak resident memory
(CPU) or the caching allocator's peak (CUDA). Reported: the whole peak, and the step's share
(the peak minus the memory held before the step: torch, the model, the batch).

    python benchmarks/bench_step_memory.py [--max-tokens 8192] [--vocab 37000] [--precision bf16]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import time

import torch
import torch.nn.functional as F

from engine.batching import target_positions
from engine.loss import label_smoothed_loss
from engine.model import Transformer
from engine.vocab import PAD_ID


def before_loss(logits, tgt_out, epsilon):
    """The loss as it was (engine/train.py before the lean step)."""
    lprobs = F.log_softmax(logits.float(), dim=-1).view(-1, logits.size(-1))
    target = tgt_out.reshape(-1)
    keep = target.ne(PAD_ID)
    lprobs, target = lprobs[keep], target[keep]
    nll = -lprobs.gather(1, target.unsqueeze(1)).sum()
    smooth = -lprobs.sum() / lprobs.size(-1)
    return (1.0 - epsilon) * nll + epsilon * smooth, nll


def batch(max_tokens: int, length: int, vocab: int) -> tuple[torch.Tensor, ...]:
    """max_tokens / length rows, each with up to a quarter of padding at its end."""
    g = torch.Generator().manual_seed(0)
    rows = max_tokens // length
    src = torch.randint(4, vocab, (rows, length), generator=g)
    tgt = torch.randint(4, vocab, (rows, length + 1), generator=g)
    for row in range(rows):
        src[row, length - int(torch.randint(0, length // 4 + 1, (1,), generator=g)):] = PAD_ID
        tgt[row, length + 1 - int(torch.randint(0, length // 4 + 1, (1,), generator=g)):] = PAD_ID
    return src, tgt[:, :-1].contiguous(), tgt[:, 1:].contiguous()


def rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def one_step(kind: str, args: argparse.Namespace, queue) -> None:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = Transformer(args.vocab, args.vocab, d_model=args.d_model, ffn_hidden=args.ffn,
                        n_head=args.heads, n_layers=args.layers, dropout=0.1,
                        share_embeddings=True).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9,
                                 fused=True)
    src, tgt_in, tgt_out = (t.to(device) for t in batch(args.max_tokens, args.len, args.vocab))
    tokens = int(tgt_out.ne(PAD_ID).sum())
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[args.precision]
    if device.type == "cuda":
        torch.cuda.synchronize()
        held = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        held = rss_now()
    started, cpu = time.perf_counter(), time.process_time()
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        if kind == "before":
            logits = model(src, tgt_in)
        else:
            keep, target = target_positions(tgt_out.cpu())
            logits = model(src, tgt_in, keep.to(device))
    if kind == "before":
        loss, nll = before_loss(logits, tgt_out, 0.1)
    else:
        loss, nll = label_smoothed_loss(logits, target.to(device), 0.1)
    del logits
    (loss / tokens).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else rss_peak()
    queue.put({"kind": kind, "peak": peak, "held": held, "nll": nll.item() / tokens,
               "loss": loss.item() / tokens, "seconds": time.perf_counter() - started,
               "cpu_seconds": time.process_time() - cpu, "tokens": tokens})


def measure(kind: str, args: argparse.Namespace) -> dict:
    context = multiprocessing.get_context("spawn")  # a fresh process: its own peak
    queue = context.Queue()
    child = context.Process(target=one_step, args=(kind, args, queue))
    child.start()
    result = queue.get()
    child.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=8192)
    parser.add_argument("--len", type=int, default=32, help="padded length of every row")
    parser.add_argument("--vocab", type=int, default=37000)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--ffn", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    results = {kind: measure(kind, args) for kind in ("before", "after")}
    gib = 2 ** 30
    what = "caching allocator peak" if args.device.startswith("cuda") else "peak RSS"
    print(f"one training step, {args.device}, {args.precision}: max_tokens {args.max_tokens} "
          f"({args.max_tokens // args.len} rows x {args.len}, "
          f"{results['after']['tokens']:,} real target tokens), vocab {args.vocab:,}, "
          f"d_model {args.d_model}, {args.layers}+{args.layers} layers; {what}, fresh child each")
    for kind, r in results.items():
        print(f"  {kind:<6} peak {r['peak'] / gib:6.2f} GiB, step {(r['peak'] - r['held']) / gib:6.2f}"
              f" GiB above the {r['held'] / gib:.2f} GiB held before it; loss {r['loss']:.5f}, "
              f"nll {r['nll']:.5f}; {r['seconds']:.1f} s wall, {r['cpu_seconds']:.1f} s CPU")
    before, after = results["before"], results["after"]
    print(f"before / after: peak {before['peak'] / after['peak']:.2f}x, the step's own memory "
          f"{(before['peak'] - before['held']) / max(after['peak'] - after['held'], 1):.2f}x; "
          f"loss differs by {abs(before['loss'] - after['loss']):.2e} per token")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
