"""Gradient averaging across processes: the engine's hand averaging (engine/distributed.py: one
all-reduce of persistent flat buffers after the group's backward passes, once every rank agreed
no batch ran out of memory) against ``DistributedDataParallel`` (all-reduce overlapped with the
backward, ``no_sync`` for the accumulated batches). The same model, batches and update_freq;
rounds interleave the two, and the ratio is the median of the per-round ratios.

    python -m torch.distributed.run --standalone --nproc_per_node=2 benchmarks/bench_ddp.py \\
        [--rounds 5] [--updates 3] [--update-freq 2] [--d-model 256 --layers 3 --batch 32]

On CPU the processes use gloo (run it with OMP_NUM_THREADS=1 on a small machine); on GPUs NCCL.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from engine import distributed, replicas
from engine.loss import label_smoothed_loss
from engine.model import Transformer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--len", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--update-freq", type=int, default=2)
    args = parser.parse_args()
    device_choice = "cuda" if torch.cuda.is_available() else "cpu"
    assert distributed.init_from_env(device_choice), "run it under torch.distributed.run"
    rank = distributed.rank()
    device = (torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
              if device_choice == "cuda" else torch.device("cpu"))

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return Transformer(args.vocab, args.vocab, d_model=args.d_model,
                           ffn_hidden=4 * args.d_model, n_head=4, n_layers=args.layers,
                           share_embeddings=True).to(device)

    hand, ddp_inner = model(), model()
    ddp = DistributedDataParallel(ddp_inner, device_ids=[device.index] if device.index is not None
                                  else None)
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=1e-4)
                  for name, m in (("hand", hand), ("ddp", ddp))}
    g = torch.Generator().manual_seed(1 + rank)
    batches = [(torch.randint(4, args.vocab, (args.batch, args.len), generator=g).to(device),
                torch.randint(4, args.vocab, (args.batch, args.len), generator=g).to(device))
               for _ in range(args.update_freq)]

    def backward(m, src, tgt):
        logits = m(src, tgt)
        loss, _ = label_smoothed_loss(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1), 0.1)
        (loss / tgt.numel()).backward()

    def update(name: str) -> None:
        m, optimizer = (hand, optimizers["hand"]) if name == "hand" else (ddp, optimizers["ddp"])
        for i, (src, tgt) in enumerate(batches):
            last = i == len(batches) - 1
            quiet = ddp.no_sync() if name == "ddp" and not last else contextlib.nullcontext()
            with quiet:
                backward(m, src, tgt)
        if name == "hand":  # the engine's order: agree on OOM flags, then average once
            distributed.any_rank(False)
            replicas.average_gradients(list(hand.parameters()))
        else:
            distributed.any_rank(False)  # OOM agreement is needed with DDP too
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for name in ("hand", "ddp"):  # warm up
        update(name)
    times: dict[str, list[float]] = {"hand": [], "ddp": []}
    for r in range(args.rounds):
        for name in (("hand", "ddp") if r % 2 == 0 else ("ddp", "hand")):
            dist.barrier()
            started = time.perf_counter()
            for _ in range(args.updates):
                update(name)
            times[name].append((time.perf_counter() - started) / args.updates)
    if rank == 0:
        params = sum(p.numel() for p in hand.parameters())
        ratios = [h / d for h, d in zip(times["hand"], times["ddp"])]
        print(f"{distributed.world_size()} processes ({distributed.backend()}), {params:,} "
              f"parameters, update_freq {args.update_freq}, batches {args.batch} x {args.len}; "
              f"load average {os.getloadavg()[0]:.1f}")
        for name in times:
            print(f"{name:<5} {statistics.median(times[name]):.3f} s/update "
                  f"(rounds {min(times[name]):.3f}-{max(times[name]):.3f})")
        print(f"hand / ddp time = {statistics.median(ratios):.3f} "
              f"(rounds {min(ratios):.3f}-{max(ratios):.3f}; > 1: DDP is faster)")
    distributed.teardown()


if __name__ == "__main__":
    main()
