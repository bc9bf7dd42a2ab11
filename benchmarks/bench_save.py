"""How long a checkpoint_last.pt save stalls training, on the Transformer-base model.

Builds the paper's base model (d_model 512, 6+6 layers, shared vocabulary of 37,000) with its
fused Adam after one real update (so the optimizer holds both moments, as in a run), then times,
interleaved over rounds, in the same process:

    update   one training update (forward, backward, Adam) on a batch of --tokens tokens: the peer
    save     engine.checkpoint.save_checkpoint of the full training state (atomic: temporary
             file, fsync, rename), the stall a timed save costs today
    copy     cloning that state's tensors in memory: what the stall would be if a background
             thread wrote the file from a copy

Reports wall and CPU seconds of each, the file size, and save/update as a ratio.

    python benchmarks/bench_save.py [--rounds 3] [--tokens 2048] [--dir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from engine import checkpoint as ckpt
from engine.batching import target_positions
from engine.loss import label_smoothed_loss
from engine.model import Transformer


def timed(call) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=2048, help="target tokens of the batch")
    parser.add_argument("--vocab", type=int, default=37000)
    parser.add_argument("--dir", type=Path, help="where the checkpoint is written (default: a "
                        "temporary directory on the disk of the current directory)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = Transformer(src_vocab=args.vocab, tgt_vocab=args.vocab, d_model=512, ffn_hidden=2048,
                        n_head=8, n_layers=6, dropout=0.1, max_len=256, share_embeddings=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9,
                                 fused=True)
    rows, width = max(args.tokens // 32, 1), 32
    src = torch.randint(4, args.vocab, (rows, width))
    tgt = torch.randint(4, args.vocab, (rows, width + 1))

    def update() -> None:
        keep, target = target_positions(tgt[:, 1:])
        loss, _ = label_smoothed_loss(model(src, tgt[:, :-1], keep), target, 0.1)
        (loss / target.numel()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    update()  # Adam's moments exist from here on, as in a run
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "rng": ckpt.rng_state(), "epoch": 1, "step": 1}
    directory = args.dir or Path(tempfile.mkdtemp(prefix="bench-save-", dir="."))
    path = directory / ckpt.LAST

    def save() -> None:
        ckpt.save_checkpoint(state, path)

    def copy() -> None:
        # the tensors of model and optimizer state cloned: a background writer's snapshot
        torch.utils._pytree.tree_map(
            lambda x: x.clone() if isinstance(x, torch.Tensor) else x, state)

    results: dict[str, list[tuple[float, float]]] = {"update": [], "save": [], "copy": []}
    for _ in range(args.rounds):
        for name, call in (("update", update), ("save", save), ("copy", copy)):
            results[name].append(timed(call))
    params = sum(p.numel() for p in model.parameters())
    size = path.stat().st_size
    print(f"Transformer-base: {params / 1e6:.1f} M parameters, checkpoint {size / 2**20:.0f} MiB "
          f"({path.parent}), {torch.get_num_threads()} threads, {args.rounds} rounds")
    median = {name: (statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs))
              for name, runs in results.items()}
    for name, (wall, cpu) in median.items():
        print(f"  {name:6s} wall {wall:7.3f} s   cpu {cpu:7.3f} s")
    update_wall, save_wall, copy_wall = (median[n][0] for n in ("update", "save", "copy"))
    print(f"save / update (wall): {save_wall / update_wall:.2f}x; copy / update: "
          f"{copy_wall / update_wall:.2f}x; a save every 10 minutes stalls "
          f"{100 * save_wall / 600:.2f}% of training time")
    path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
