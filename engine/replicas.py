"""The model's replicas in a torchrun job: every rank starts from rank 0's weights, gradients
are averaged once per update, each rank's dropout generator is kept in checkpoints, and a
checkpoint of another number of processes is adapted. For one process every function here is
the identity (engine/distributed.py says how the job divides the work).

Why gradients are averaged by hand, not by DistributedDataParallel: DDP overlaps its
all-reduce with the backward, but a rank whose batch runs out of memory would leave the others
waiting in it; the hand
averaging runs after the OOM agreement, in persistent flat buffers (``FlatGradients``: no
allocation per update). Measured with benchmarks/bench_ddp.py, 2 gloo processes of 1 thread
on the 2-core AMD EPYC development machine (shared, load average 4-7), update_freq 2 (DDP
with no_sync on the first batch), interleaved rounds, hand / DDP time per update: 0.96
(1.4 M parameters, 0.38 vs 0.39 s) and 0.82 (7.6 M parameters, 3.72 vs 4.48 s): the hand
averaging is as fast or faster here (DDP's overlap only competes for the same two cores), so
it stays the default. On GPUs with NCCL the overlap can win (published: up to ~40% of an
iteration); benchmarks/gpu_check.py's ddp_vs_hand measures it where 2 GPUs exist, and a DDP
path (with the all-reduced OOM flag and a zero-gradient backward on the rank that hit it)
should replace this only where that ratio is above 1.05.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.distributed import job, world_size
from engine.errors import EngineError
from engine.events import Notice

BUCKET_BYTES = 64 * 2**20  # gradients all-reduced this many bytes at a time


def broadcast_parameters(model) -> None:
    """Every rank starts from rank 0's weights (identity for one process)."""
    if job() is None:
        return
    import torch.distributed as dist

    for tensor in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(tensor.data, src=0)


class FlatGradients:
    """The persistent flat buffers gradients are all-reduced in: one per bucket of
    ``BUCKET_BYTES`` (one dtype each), allocated at the first update and reused by every one
    after (the gradients are copied in with one ``cat(out=)`` and back with one foreach copy
    per bucket; no tensor is allocated per update)."""

    def __init__(self, params: list) -> None:
        import torch

        self.params = list(params)
        self.buckets: list[tuple[list[int], Any, list]] = []  # (indices, flat buffer, views)
        size = 0
        for i, p in enumerate(self.params):
            nbytes = p.numel() * p.element_size()
            first = self.params[self.buckets[-1][0][0]] if self.buckets else None
            if first is None or size + nbytes > BUCKET_BYTES or p.dtype != first.dtype:
                self.buckets.append(([], None, []))
                size = 0
            self.buckets[-1][0].append(i)
            size += nbytes
        for n, (indices, _, _) in enumerate(self.buckets):
            shapes = [self.params[i].shape for i in indices]
            flat = torch.empty(sum(self.params[i].numel() for i in indices),
                               dtype=self.params[indices[0]].dtype,
                               device=self.params[indices[0]].device)
            views = [v.view(shape) for v, shape in
                     zip(flat.split([self.params[i].numel() for i in indices]), shapes)]
            self.buckets[n] = (indices, flat, views)

    def matches(self, params: list) -> bool:
        return len(params) == len(self.params) and all(
            a is b for a, b in zip(params, self.params))

    def average(self, world: int) -> None:
        import torch
        import torch.distributed as dist

        for p in self.params:
            if p.grad is None:  # a parameter this rank's batches did not reach
                p.grad = torch.zeros_like(p)
        for indices, flat, views in self.buckets:
            grads = [self.params[i].grad for i in indices]
            torch.cat([g.reshape(-1) for g in grads], out=flat)
            dist.all_reduce(flat)
            flat.div_(world)
            torch._foreach_copy_(grads, views)


_flat: FlatGradients | None = None


def average_gradients(params: list) -> None:
    """Each gradient becomes its mean over the ranks (default group: NCCL on GPUs), in the
    persistent flat buckets of ``FlatGradients``. Every rank calls it with the same parameters,
    in the same order, and only once the control group agreed that every rank's batches went
    through."""
    global _flat
    if job() is None:
        return
    if _flat is None or not _flat.matches(params):
        _flat = FlatGradients(params)
    _flat.average(job().world)


def adapt_resume(state: dict[str, Any], epoch: int, batch_in_epoch: int, path: Path | str,
                 update_freq: int, max_tokens: int) -> tuple[int, Notice | None]:
    """A checkpoint saved by this run's number of processes, or by another one: (the batches of
    the epoch this rank has done, a notice to show or None); an EngineError when it cannot go on.

    ``batch_in_epoch`` counts each rank's batches; ``saved ranks x batch_in_epoch`` batches of the
    epoch's order were done, which the new ranks split again when they can do so evenly.
    """
    saved = int(state.get("world_size", 1))
    world = world_size()
    if saved == world:
        _restore_rng_state(state.get("rank_rng"))  # each rank's own dropout masks go on
        return batch_in_epoch, None
    if batch_in_epoch:
        done = batch_in_epoch * saved
        if done % world:
            raise EngineError(
                f"{path}: saved by {saved} process(es) in the middle of epoch {epoch + 1} "
                f"after {done} batches, which {world} processes cannot split evenly: resume with "
                f"{saved} process(es), or from a checkpoint saved at the end of an epoch "
                "(model_epoch_N.pt)")
        batch_in_epoch = done // world
    return batch_in_epoch, Notice(level="warning", text=(
        f"{path} was trained by {saved} process(es), this run has {world}: an update now "
        f"averages {world} x {update_freq} batches of up to {max_tokens:,} tokens instead of "
        f"{saved} x {update_freq} (change training.update_freq to keep the effective batch)"))


def gather_rng_states() -> list | None:
    """Every rank's torch generator state (CPU, then its GPU's), in rank order; every rank must
    call it. None for one process, whose checkpoint already holds its states."""
    current = job()
    if current is None:
        return None
    import torch
    import torch.distributed as dist

    states = [torch.get_rng_state()]
    if current.backend == "nccl":
        states.append(torch.cuda.get_rng_state())
    mine = torch.cat(states)
    gathered = [torch.empty_like(mine) for _ in range(current.world)]
    dist.all_gather(gathered, mine, group=current.wait_group)
    return gathered


def _restore_rng_state(saved: list | None) -> None:
    """This rank's generator state from a checkpoint of a job with as many ranks."""
    current = job()
    if current is None or not saved or len(saved) != current.world:
        return
    import torch

    mine = saved[current.rank]
    cpu_size = torch.get_rng_state().numel()
    torch.set_rng_state(mine[:cpu_size])
    if current.backend == "nccl" and mine.numel() > cpu_size:
        torch.cuda.set_rng_state(mine[cpu_size:])
