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
- Two kinds of traffic, on two groups. Gradients go through the default group (NCCL on GPUs),
  once per update, and only after every rank has said over the control group that its batches
  went through: a rank whose batch ran out of memory makes every rank skip that update, where
  an automatic all-reduce in the backward (DistributedDataParallel) would leave the others
  waiting for it forever. Control traffic (stop and pause requests, out-of-memory flags, loss
  sums at reporting time) goes through a gloo group of host tensors: it never waits on a GPU,
  and a dead peer shows up there as a closed connection within the project's timeout.
- Control (``agree_control``): rank 0 owns the run directory's lock, heartbeat and control
  channel (engine/runs.py); at every update boundary and stage boundary the ranks agree (a max
  over gloo) on go / pause / stop, so they pause together, resume together and stop at the same
  update boundary; a stop signal on any rank (torchrun forwards SIGTERM, SIGINT, SIGHUP) stops
  them all. While paused they agree again every CONTROL_POLL_SECONDS: no collective waits out
  a pause of hours.
- Failures end the job in bounded time: a control collective waits at most ``TIMEOUT_ENV``
  seconds (the waits for rank 0's data preparation, checkpoint writes and BLEU at most
  ``PREPARE_TIMEOUT_ENV``). Signals are the run process's main thread's (engine/cli.py), never
  the engine thread's: torchrun's SIGTERM (it ends every rank when one fails) asks for a stop,
  and the next collective finds the dead peer. Waiting for the GPU is done by polling
  (``wait_for_device``), so a rank blocked behind an NCCL all-reduce whose peer died gives up
  STOP_GRACE_SECONDS after that SIGTERM, and rank 0 records a ``RunFailed`` in events.jsonl.
  Checkpoints are written atomically, so the last one stays loadable whatever is killed.
- The model's replicas (rank 0's weights at the start, gradients averaged once per update,
  each rank's dropout generator in checkpoints) are engine/replicas.py's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from engine.errors import EngineError
from engine.events import Emit, RunFailed
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
    device: Any  # torch.device of the tensors that go through the default group (gradients)
    control_group: Any  # gloo, the project's timeout: flags and loss sums as host tensors
    wait_group: Any  # gloo, the long timeout: waiting for rank 0 (data, checkpoints, BLEU)
    stop_signal_at: float | None = None  # monotonic time of the first stop signal (cli.py)


_job: _Job | None = None


# --- the job -------------------------------------------------------------------------------


def job() -> _Job | None:
    """The job this process belongs to, None for one process (for engine/replicas.py)."""
    return _job


ONE_PROCESS_JOB_ENV = "TRANSFORMER_DIST_ONE_PROCESS_JOB"  # "1": a 1-process torchrun is a job


def launched_with_several_processes() -> bool:
    """True under torchrun (or any env:// launcher) with WORLD_SIZE > 1, or with WORLD_SIZE 1
    when ONE_PROCESS_JOB_ENV is "1" (benchmarks/gpu_check.py runs the NCCL path on one GPU)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return False
    one = world == 1 and "RANK" in os.environ and os.environ.get(ONE_PROCESS_JOB_ENV) == "1"
    return world > 1 or one


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
        from engine.device import use_expandable_segments

        use_expandable_segments()  # before CUDA starts here; the pipeline says so in a Notice
        torch.cuda.set_device(local_rank)  # "cuda" now means this rank's own GPU
        backend, device = "nccl", torch.device("cuda", local_rank)
    else:
        backend, device = "gloo", torch.device("cpu")
    try:
        # device_id: NCCL binds this rank's communicator to its GPU at once (no guessing later)
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout),
                                device_id=device if use_cuda else None)
        control_group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout))
        wait_group = dist.new_group(backend="gloo", timeout=timedelta(seconds=prepare_timeout))
    except Exception as exc:
        raise EngineError(f"rank {rank} could not join the {world}-process job at "
                          f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} "
                          f"({_first_line(exc)})") from None
    _job = _Job(rank, world, local_rank, backend, device, control_group, wait_group)
    return True  # signals are the run process's (engine/cli.py): see stop_signalled


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


def backend() -> str | None:
    """The gradients' backend ("nccl" or "gloo"); None for one process."""
    return _job.backend if _job else None


def is_main() -> bool:
    """Rank 0, or the only process: the one that writes the run directory."""
    return _job is None or _job.rank == 0


def describe() -> str:
    """'rank 1 of 2 on host' for messages; '' for one process."""
    return f"rank {_job.rank} of {_job.world} on {socket.gethostname()}" if _job else ""


def stop_signalled() -> None:
    """The run process got a stop signal (engine/cli.py calls this from its main thread): a wait
    for the GPU that lasts STOP_GRACE_SECONDS longer is a peer that will never answer."""
    import time

    if _job is not None and _job.stop_signal_at is None:
        _job.stop_signal_at = time.monotonic()


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
    """Every rank waits here for the others, with the long timeout: after rank 0's checkpoint
    writes, which a slow filesystem may stretch past the control timeout."""
    if _job is not None:
        import torch.distributed as dist

        dist.barrier(group=_job.wait_group)


def reduce_sums(values: list[float]) -> list[float]:
    """Each value summed over the ranks (host numbers over the gloo control group)."""
    if _job is None:
        return list(values)
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, group=_job.control_group)
    return tensor.tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank when it is True on one (a stop request, a failed check)."""
    if _job is None:
        return flag
    return reduce_sums([1.0 if flag else 0.0])[0] > 0


CONTROL_POLL_SECONDS = 0.2  # while paused, the ranks agree on the control state this often
STOP_GRACE_SECONDS = 10.0  # after a stop signal, a GPU wait this long means a dead peer
_GO, _PAUSE, _STOP = 0, 1, 2


def agree_control(control, patient: bool = False, on_pause=None) -> bool:
    """At a safe point (an update or stage boundary): block while paused, True when the run must
    stop. In a torchrun job every rank calls it at the same point and they act together: rank 0
    holds the control channel (engine/runs.py), a stop on any rank (its own SIGTERM or Ctrl-C)
    stops all, and a pause holds every rank here, agreeing again every CONTROL_POLL_SECONDS so
    that no collective waits for the length of the pause. ``patient``: at a stage boundary,
    where a rank may arrive long after rank 0 (the long timeout's group). ``on_pause``: called
    once, on every rank together, when a pause is agreed and before it blocks.
    """
    if _job is None:
        if control.paused and on_pause is not None:
            on_pause()
        return control.checkpoint()
    import time

    import torch
    import torch.distributed as dist

    group = _job.wait_group if patient else _job.control_group
    mirrored = False  # this rank is paused because another rank (rank 0) is
    while True:
        own_pause = control.paused and not mirrored
        mine = _STOP if control.stop_requested else _PAUSE if own_pause else _GO
        state = torch.tensor([mine], dtype=torch.int64)  # host tensor, gloo
        dist.all_reduce(state, op=dist.ReduceOp.MAX, group=group)
        agreed = int(state.item())
        if agreed != _PAUSE:
            if mirrored:
                control.resume()
            return agreed == _STOP
        if not control.paused:
            control.pause()
            mirrored = True
        if on_pause is not None:
            on_pause()
            on_pause = None
        time.sleep(CONTROL_POLL_SECONDS)


def wait_for_device(device) -> None:
    """Wait until the GPU has done the work queued so far, polling, in a torchrun job on CUDA.

    A plain synchronising read (``.item()``) blocks inside CUDA: behind an NCCL all-reduce whose
    peer died it would wait until torchrun kills the process without a word. Polling lets this
    rank give up once a stop signal (torchrun's SIGTERM) is STOP_GRACE_SECONDS old, so that the
    failure is recorded.
    """
    if _job is None or getattr(device, "type", "cpu") != "cuda":
        return
    import time

    import torch

    done = torch.cuda.Event()
    done.record()
    while not done.query():
        time.sleep(0.0002)
        signalled = _job.stop_signal_at
        if signalled is not None and time.monotonic() - signalled > STOP_GRACE_SECONDS:
            raise EngineError("terminated by SIGTERM while waiting for the GPU: torchrun ends "
                              "every process of the job when one of them fails (its error is "
                              "in torchrun's report); the last checkpoint in the run directory "
                              "stays loadable")


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
