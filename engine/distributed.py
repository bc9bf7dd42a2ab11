"""Several processes, one run: what `torchrun --nproc_per_node=N -m engine ...` needs.

torchrun starts one process per GPU (or N on the CPU) with RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT in the environment; ``init_from_env`` turns that into a process
group (NCCL on GPUs, gloo on the CPU). Without those variables every function here is the
one-process identity, so the engine calls them unconditionally.

How the job divides the work:

- Rank 0 is the run's only writer: ``events.jsonl``, ``config.toml``, the tokenizer, the
  encoded data and the checkpoints. The other ranks wait for rank 0's data, tokenizer and
  encode stages (``run_stage``), then run them too and find rank 0's files (the stages' own
  reuse logic loads them).
- Every rank builds the same batches and the same epoch order (same seed); rank r trains
  ``order[r::world]`` after dropping the last ``len % world`` batches, so all ranks take the same
  number of steps. Update i is then batches ``order[i*world*u : (i+1)*world*u]`` (u =
  update_freq): the same batches, in the same groups, as one process with update_freq world*u.
- Gradients are averaged by DistributedDataParallel, once per update (``no_sync`` on the other
  micro-batches). Losses and token counts are summed over the ranks every batch, so every rank
  takes the same decisions and the events describe the whole job.
- Control (``agree_control``): rank 0 owns the run directory's lock, heartbeat and control
  channel (engine/runs.py); at every batch and stage boundary the ranks agree (a max over a gloo
  group) on go / pause / stop, so they pause together, resume together and stop at the same
  update boundary; a stop signal on any rank (torchrun forwards SIGTERM, SIGINT, SIGHUP) stops
  them all.
- Failures end the job in bounded time: a collective waits at most ``TIMEOUT_ENV`` seconds
  (the waits for rank 0's data preparation and BLEU at most ``PREPARE_TIMEOUT_ENV``); with gloo
  a dead peer shows up at once as a closed connection; torchrun sends SIGTERM to the other
  ranks of a machine when one dies: they stop, their next collective finds the dead peer, and
  rank 0 records a ``RunFailed`` in events.jsonl.
  Checkpoints are written atomically, so the last one stays loadable whatever is killed.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import socket
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from engine.errors import EngineError
from engine.events import Emit, Notice, RunFailed
from engine.stages import MAIN_FIRST, StageResult

if TYPE_CHECKING:
    from engine.config import RunConfig

T = TypeVar("T")

TIMEOUT_ENV = "TRANSFORMER_DIST_TIMEOUT"  # seconds a training collective may wait
PREPARE_TIMEOUT_ENV = "TRANSFORMER_DIST_PREPARE_TIMEOUT"  # seconds to wait for rank 0's stages
DEFAULT_TIMEOUT = 300.0  # a checkpoint write on rank 0 is the longest legitimate wait
DEFAULT_PREPARE_TIMEOUT = 6 * 3600.0  # a WMT14 download plus the full preset's tokenizer
_STATUS = {"ok": 0, "failed": 1, "stopped": 2}


@dataclass
class _Job:
    rank: int
    world: int
    local_rank: int
    backend: str
    device: Any  # torch.device of the tensors that go through the default group
    wait_group: Any  # a gloo group with the long timeout, for waiting on rank 0


_job: _Job | None = None


# --- the job -------------------------------------------------------------------------------


def launched_with_several_processes() -> bool:
    """True under torchrun (or any env:// launcher) with WORLD_SIZE > 1."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def _seconds_from_env(name: str, default: float) -> float:
    text = os.environ.get(name, "")
    if not text:
        return default
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise EngineError(f"{name}={text!r}: must be a number of seconds > 0")
    return seconds


def init_from_env(device_choice: str) -> bool:
    """Join the torchrun job this process belongs to; False when it is the only process.

    ``device_choice`` is training.device: CUDA (one GPU per local rank, NCCL) unless it is
    "cpu" or there is no GPU (gloo).
    """
    global _job
    if _job is not None or not launched_with_several_processes():
        return _job is not None
    import torch
    import torch.distributed as dist

    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError):
        raise EngineError("WORLD_SIZE is set but RANK is missing or not a number: start several "
                          "processes with torchrun --nproc_per_node=N -m engine ...") from None
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise EngineError(f"WORLD_SIZE={world} but {name} is not set: start several "
                              "processes with torchrun --nproc_per_node=N -m engine ...")
    timeout = _seconds_from_env(TIMEOUT_ENV, DEFAULT_TIMEOUT)
    prepare_timeout = _seconds_from_env(PREPARE_TIMEOUT_ENV, DEFAULT_PREPARE_TIMEOUT)
    if not dist.is_available():
        raise EngineError("this torch build has no torch.distributed: install a build with it "
                          "to train with several processes")
    use_cuda = device_choice != "cpu" and torch.cuda.is_available()
    if use_cuda:
        gpus = torch.cuda.device_count()
        if local_rank >= gpus:
            raise EngineError(f"LOCAL_RANK={local_rank} but this machine has {gpus} GPU(s): "
                              f"start at most {gpus} processes per node (--nproc_per_node)")
        torch.cuda.set_device(local_rank)  # "cuda" now means this rank's own GPU
        backend, device = "nccl", torch.device("cuda", local_rank)
    else:
        backend, device = "gloo", torch.device("cpu")
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
        wait_group = dist.new_group(backend="gloo", timeout=timedelta(seconds=prepare_timeout))
    except Exception as exc:
        raise EngineError(f"rank {rank} could not join the {world}-process job at "
                          f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} "
                          f"({_first_line(exc)})") from None
    _job = _Job(rank, world, local_rank, backend, device, wait_group)
    return True  # signals are the run process's (engine/cli.py): SIGTERM stops every rank


def teardown(failed: bool = False) -> None:
    """Leave the job. After a failure the group is only dropped: a peer may be gone, and waiting
    for it is what we must not do."""
    global _job
    if _job is None:
        return
    import torch.distributed as dist

    if not failed:
        try:
            dist.destroy_process_group()
        except Exception:
            pass
    _job = None


def active() -> bool:
    return _job is not None


def rank() -> int:
    return _job.rank if _job else 0


def world_size() -> int:
    return _job.world if _job else 1


def is_main() -> bool:
    """Rank 0, or the only process: the one that writes the run directory."""
    return _job is None or _job.rank == 0


def describe() -> str:
    """'rank 1 of 2 on host' for messages; '' for one process."""
    return f"rank {_job.rank} of {_job.world} on {socket.gethostname()}" if _job else ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    # gloo starts with its source location and ends with advice: keep what happened
    line = re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", line)
    line = line.split(". This is typically caused")[0]
    return line[:240]


def _is_peer_failure(exc: BaseException) -> bool:
    """A collective that failed because another rank died or stopped answering."""
    import torch.distributed as dist

    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        word in text for word in ("gloo", "Gloo", "NCCL", "Connection reset", "Connection closed",
                                  "Timed out", "timed out"))


# --- collectives (identity for one process) ------------------------------------------------


def barrier() -> None:
    if _job is not None:
        import torch.distributed as dist

        dist.barrier(group=_job.wait_group)


def reduce_sums(values: list[float]) -> list[float]:
    """Each value summed over the ranks."""
    if _job is None:
        return list(values)
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=_job.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


CONTROL_POLL_SECONDS = 0.2  # while paused, the ranks agree on the control state this often
_GO, _PAUSE, _STOP = 0, 1, 2


def agree_control(control) -> bool:
    """At a safe point (a batch, a stage boundary): block while paused, True when the run must
    stop. In a torchrun job every rank calls it at the same point and they act together: rank 0
    holds the control channel (engine/runs.py), a stop on any rank (its own SIGTERM or Ctrl-C)
    stops all, and a pause holds every rank here, agreeing again every CONTROL_POLL_SECONDS so
    that no collective waits for the length of the pause (a pause may last hours).
    """
    if _job is None:
        return control.checkpoint()
    import time

    import torch
    import torch.distributed as dist

    mirrored = False  # this rank is paused because another rank (rank 0) is
    while True:
        own_pause = control.paused and not mirrored
        mine = _STOP if control.stop_requested else _PAUSE if own_pause else _GO
        # gloo on the CPU: no device synchronisation for a flag
        state = torch.tensor([mine], dtype=torch.int64)
        dist.all_reduce(state, op=dist.ReduceOp.MAX, group=_job.wait_group)
        agreed = int(state.item())
        if agreed != _PAUSE:
            if mirrored:
                control.resume()
            return agreed == _STOP
        if not control.paused:
            control.pause()
            mirrored = True
        time.sleep(CONTROL_POLL_SECONDS)


def reduce_batch(nll: float | None, tokens: int) -> tuple[float | None, int]:
    """The whole job's (NLL per target token, target tokens) for one batch position.

    None when the loss was not finite on any rank: every rank then counts a bad batch, and
    the update, whose gradients are NaN everywhere after the all-reduce, is skipped everywhere.
    """
    if _job is None:
        return nll, tokens
    bad = nll is None
    nll_sum, token_sum, bad_ranks = reduce_sums(
        [0.0 if bad else nll * tokens, 0.0 if bad else float(tokens), 1.0 if bad else 0.0])
    if bad_ranks:
        return None, 0
    return nll_sum / max(token_sum, 1.0), int(token_sum)


def shard_order(order, rank: int, world: int):
    """Rank ``rank``'s batches of an epoch's order: every ``world``-th, after dropping the last
    ``len % world`` so that every rank takes the same number of steps."""
    usable = len(order) - len(order) % world
    return order[:usable][rank::world]


def shard(order):
    """This process's part of an epoch's batch order (all of it for one process)."""
    return order if _job is None else shard_order(order, _job.rank, _job.world)


def shard_list(items: list) -> list:
    """This rank's part of a list that needs no equal counts (validation batches)."""
    return items if _job is None else items[_job.rank::_job.world]


def from_main(compute: Callable[[], float | None]) -> float | None:
    """Rank 0 computes a number (BLEU); the other ranks wait for it and get the same."""
    if _job is None:
        return compute()
    import torch
    import torch.distributed as dist

    value = compute() if _job.rank == 0 else None
    tensor = torch.tensor([0.0 if value is None else float(value), value is not None],
                          dtype=torch.float64)
    dist.broadcast(tensor, src=0, group=_job.wait_group)
    return tensor[0].item() if tensor[1].item() else None


# --- model ---------------------------------------------------------------------------------


def wrap_model(model):
    """The DistributedDataParallel wrapper that trains ``model`` (None for one process).

    Constructing it broadcasts rank 0's weights, so every rank starts from the same model.
    """
    if _job is None:
        return None
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [_job.local_rank] if _job.backend == "nccl" else None
    # the model's only buffer is the fixed sinusoid table: nothing to broadcast every forward
    # (torch >= 2.13 names that forward_sync_buffers; older versions broadcast_buffers)
    newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    no_buffer_sync = {"forward_sync_buffers" if newer else "broadcast_buffers": False}
    return DistributedDataParallel(model, device_ids=device_ids, **no_buffer_sync)


def sync_gradients(parallel, sync: bool):
    """Context for one micro-batch: gradients are all-reduced only on an update's last one."""
    if parallel is None or sync:
        return nullcontext()
    return parallel.no_sync()


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
    if _job is None:
        return None
    import torch
    import torch.distributed as dist

    states = [torch.get_rng_state()]
    if _job.backend == "nccl":
        states.append(torch.cuda.get_rng_state())
    mine = torch.cat(states)
    gathered = [torch.empty_like(mine) for _ in range(_job.world)]
    dist.all_gather(gathered, mine, group=_job.wait_group)
    return gathered


def _restore_rng_state(saved: list | None) -> None:
    """This rank's generator state from a checkpoint of a job with as many ranks."""
    if _job is None or not saved or len(saved) != _job.world:
        return
    import torch

    mine = saved[_job.rank]
    cpu_size = torch.get_rng_state().numel()
    torch.set_rng_state(mine[:cpu_size])
    if _job.backend == "nccl" and mine.numel() > cpu_size:
        torch.cuda.set_rng_state(mine[cpu_size:])


# --- stages --------------------------------------------------------------------------------


def run_stage(name: str, call: Callable[[], StageResult[T]], config: "RunConfig",
              run_dir: Path) -> StageResult[T]:
    """Run one pipeline stage on this rank (``call`` runs it with its arguments); rank 0 first
    for the stages that write the run directory's files."""
    if _job is None:
        return call()
    try:
        if name in MAIN_FIRST:
            result = _main_first(name, call, Path(run_dir))
        else:
            result = call()
        if name == "data":
            _check_same_inputs(config, result.output)
        return result
    except Exception as exc:
        if isinstance(exc, EngineError) or not _is_peer_failure(exc):
            raise
        last = Path(run_dir) / "checkpoint_last.pt"
        kept = f"{last} holds the last saved state" if last.is_file() else "no checkpoint yet"
        raise EngineError(f"{describe()}: another process of the job died or stopped answering "
                          f"({_first_line(exc)}); {kept}") from None


def _broadcast_status(status: int) -> int:
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([status], dtype=torch.int64)
    dist.broadcast(tensor, src=0, group=_job.wait_group)
    return int(tensor.item())


def _main_first(name: str, call: Callable[[], StageResult[T]], run_dir: Path) -> StageResult[T]:
    from engine.control import RunStopped

    if _job.rank == 0:
        try:
            result = call()
        except RunStopped:
            _broadcast_status(_STATUS["stopped"])
            raise
        except BaseException:
            _broadcast_status(_STATUS["failed"])
            raise
        _broadcast_status(_STATUS["ok"])
        return result
    status = _broadcast_status(-1)
    if status == _STATUS["stopped"]:
        raise RunStopped()
    if status != _STATUS["ok"]:
        raise EngineError(f"{describe()}: rank 0 failed in stage {name} (its error is in "
                          f"{run_dir}/events.jsonl); stopping too")
    if not (run_dir / "config.toml").is_file():
        raise EngineError(f"{describe()}: {run_dir} does not show rank 0's files: with "
                          "several nodes, --run-dir must be on a filesystem every node shares")
    result = call()
    if name != "data" and not result.reused:
        raise EngineError(f"{describe()}: stage {name} could not reuse rank 0's output in "
                          f"{run_dir}; start every process with the same inputs")
    return result


def _check_same_inputs(config: "RunConfig", corpus) -> None:
    """Every rank must have the same config and data, or their batches would not match."""
    import torch
    import torch.distributed as dist

    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    digest.update(corpus.fingerprint().encode())
    mine = torch.tensor(list(digest.digest()), dtype=torch.int64)
    main = mine.clone()
    dist.broadcast(main, src=0, group=_job.wait_group)
    differs = torch.tensor([int(not torch.equal(mine, main))], dtype=torch.int64)
    dist.all_reduce(differs, group=_job.wait_group)
    if differs.item():
        raise EngineError(f"{differs.item()} process(es) of the job have another config or other "
                          "data than rank 0: start every node with the same --preset, --set "
                          "and data files")


# --- events --------------------------------------------------------------------------------


def failures_only(emit: Emit) -> Emit:
    """What a non-main rank shows: only its own failure (rank 0 reports everything else)."""

    def on_event(event) -> None:
        if isinstance(event, RunFailed):
            named = event.message if describe() in event.message else (
                f"{describe()}: {event.message}")
            emit(RunFailed(stage=event.stage, message=named, details=event.details))

    return on_event
