"""training.compile: the model's training forward through ``torch.compile``.

The loss stays eager: its chunked float32 pass (engine/loss.py) loops over the kept tokens in
Python, which the compiler would specialise to every batch's token count.

Only the training step is compiled; ``state.model`` stays the plain module, so checkpoints hold
its own state_dict (no ``_orig_mod.`` prefixes: compiled and eager runs resume each other's),
and validation and beam search run it eagerly. Shapes are bounded: batches are padded to
lengths that are multiples of ``LENGTH_MULTIPLE`` and the batch and kept-token dimensions are
marked dynamic, so a run compiles a handful of graphs, not one per batch shape. The first
compile is timed and said (a Notice and the train stage's info): it is minutes on a big model.

"auto": on CUDA, on; on the CPU, off. benchmarks/bench_train.py on the 2-core AMD EPYC this
project is developed on (shared, load average ~7.7; d_model 128, 2+2 layers, batches 32 x 32,
fp32, 1 thread): the compiled step ran at 0.70x the eager step's tokens/s (0.65x its CPU time
ratio), no faster than torch.nn.Transformer (1.01x), after a compile of 158 s wall; bf16
0.93x (0.98x CPU time) after 415 s. Likely
causes: the compiled dropout is torch's Bernoulli mask (the eager CPU Dropout's cheaper one
breaks the graph) and dynamic-shape kernels. gpu_check.py's base_compile measures it on CUDA.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

from engine.loss import label_smoothed_loss

LENGTH_MULTIPLE = 8  # batch widths are rounded up to this when compiling


def compile_wanted(setting: Any, device: torch.device) -> bool:
    """training.compile = true | false | "auto" on ``device``."""
    if setting == "auto":
        return device.type == "cuda"
    return bool(setting)


def graph_count() -> int:
    """Graphs dynamo has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _forward(model: torch.nn.Module, src, tgt_in, keep, amp_dtype: torch.dtype | None):
    """What UpdateStep.forward_backward runs eagerly: the forward under autocast."""
    with torch.autocast(src.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        return model(src, tgt_in, keep)


class CompiledStep:
    """The training forward and loss, compiled; times its first call (the compile)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        # dynamic: one graph for every batch shape (else a second compile once shapes vary)
        self.compiled: Callable = torch.compile(_forward, dynamic=True)
        self.seconds: float | None = None  # the first call's wall time: compile + one step
        self.graphs_before = graph_count()

    def graphs(self) -> int:
        return graph_count() - self.graphs_before

    def __call__(self, src, tgt_in, keep, target, smoothing: float,
                 amp_dtype: torch.dtype | None):
        for tensor in (src, tgt_in, keep):  # batch size and kept tokens vary
            torch._dynamo.maybe_mark_dynamic(tensor, 0)
        args = (self.model, src, tgt_in, keep, amp_dtype)
        if self.seconds is not None:
            return label_smoothed_loss(self.compiled(*args), target, smoothing)
        started = time.perf_counter()
        out = label_smoothed_loss(self.compiled(*args), target, smoothing)
        self.seconds = time.perf_counter() - started
        return out
