"""The run: config -> data -> tokenizer -> encode -> batches -> model -> train.

``run`` calls each stage in order with the outputs of the stages before it and gets a typed
``StageResult`` back (engine/stages.py); a stage whose inputs have not changed reuses what an
earlier run left in the run directory and says so (``reused``). The runner owns what is common
to every stage: the events around it, pause/resume/stop, failures, and in a torchrun job the
order in which the ranks run it (engine/distributed.py).

Importing this module is cheap (no torch): the stage modules are imported when a run starts.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Callable, TypeVar

from engine import atomic, distributed
from engine.alerts import Alerts
from engine.config import RunConfig, with_effective_batch
from engine.control import RunControl, RunStopped
from engine.errors import EngineError
from engine.events import (
    Emit,
    JsonlWriter,
    Notice,
    RunFailed,
    RunFinished,
    RunPaused,
    RunResumed,
    RunStarted,
    StageFinished,
    StageStarted,
    cpu_seconds,
    fan_out,
)
from engine.inputs import check_run_inputs
from engine.stages import STAGES, StageResult, stage_names

__all__ = ["STAGES", "run", "stage_names"]

T = TypeVar("T")


def run(config: RunConfig, run_dir: Path, emit: Emit, control: RunControl | None = None,
        until: str | None = None, resume: str | None = None,
        alerts: Alerts | None = None) -> str:
    """Run the stages up to ``until``; returns "finished", "stopped" or "failed".

    Every event also goes to ``run_dir/events.jsonl``; the resolved config is written to
    ``run_dir/config.toml``. Failures become a ``RunFailed`` event, never an exception.
    In a torchrun job only rank 0 writes those files (see engine/distributed.py) and raises
    alerts (engine/alerts.py; ``alerts``: the run process's, whose main thread watches stalls).
    """
    names = stage_names(until)
    # effective_tokens fixes the tokens per update whatever the number of processes: the
    # update_freq it derives is what runs and what config.toml records
    config, batch_line = with_effective_batch(config, distributed.world_size())
    run_dir = Path(run_dir)
    try:  # bad input: refused before anything is written (the caller's emit hears why)
        check_run_inputs(config, run_dir, resume)
        writer = _start_files(config, run_dir)
    except EngineError as exc:
        emit(RunFailed(stage="", message=str(exc)))
        return "failed"
    if writer is not None:
        emit = fan_out(writer, emit)
        if config.log.tensorboard:  # a consumer like the others; closes itself at the run's end
            from engine.tensorboard import TensorBoardWriter

            emit = fan_out(TensorBoardWriter(run_dir), emit)
        # first: an alert caused by an event is written before it, so the end event stays last
        alerts = alerts or Alerts(config.notify, run_dir)
        emit = fan_out(alerts.see, emit)
        alerts.attach(emit)
    else:
        alerts = None
    control = control or RunControl()
    stages = _StageRunner(config, run_dir, emit, control, names)

    def on_control(change: str) -> None:
        if change == "paused":
            emit(RunPaused(stage=stages.current))
        elif change == "resumed":
            emit(RunResumed(stage=stages.current, paused_seconds=round(control.paused_seconds, 3)))

    control.add_listener(on_control)
    started = time.monotonic()
    emit(RunStarted(run_dir=str(run_dir), preset=config.name, stages=names,
                    processes=distributed.world_size(), versions=_versions(config)))
    if batch_line:
        emit(Notice(text=batch_line))
    status = "finished"
    try:
        _run_stages(stages, config, run_dir, emit, control, resume)
    except _Done:
        pass
    except RunStopped:
        status = "stopped"
    except EngineError as exc:
        status = "failed"
        emit(RunFailed(stage=stages.current, message=str(exc), details=getattr(exc, "details", [])))
    except Exception as exc:  # a bug or an environment problem: keep the traceback in the log
        status = "failed"
        details = traceback.format_exc().splitlines()[-12:]
        refused = atomic.storage_error(exc)
        if refused is not None:  # a full or read-only disk in any stage: say so in one line
            name = Path(refused.filename).name if refused.filename else "the run's files"
            message = atomic.storage_message(refused, Path(refused.filename or run_dir / "x"),
                                             f"writing {name}")
            details = []  # not a bug: the traceback would only hide the one line that matters
        else:
            message = f"{type(exc).__name__}: {exc}"
        emit(RunFailed(stage=stages.current, message=message, details=details))
    finally:
        control.remove_listener(on_control)
    if status != "failed":
        emit(RunFinished(status=status, seconds=round(time.monotonic() - started, 3),
                         cpu_seconds=cpu_seconds()))
    if alerts is not None:
        alerts.close()  # the last alerts are delivered before the run process exits
    if writer is not None:
        writer.close()
    return status


def _versions(config: RunConfig) -> dict[str, str]:
    """What this run runs with, for RunStarted. The GPU's name starts CUDA, so the allocator
    setting comes first (_run_stages says so in a Notice)."""
    import torch

    from engine.device import use_expandable_segments
    from engine.versions import versions

    if config.training.device == "cpu" or not torch.cuda.is_available():
        return versions("cpu")
    use_expandable_segments()
    return versions("cuda")


def _start_files(config: RunConfig, run_dir: Path) -> JsonlWriter | None:
    """The run directory, its config.toml and the events.jsonl writer (rank 0 only)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not distributed.is_main():
            return None
        atomic.write_text(run_dir / "config.toml", config.to_toml())
        return JsonlWriter(run_dir / "events.jsonl")
    except OSError as exc:
        refused = atomic.storage_error(exc)
        if refused is None:
            raise EngineError(f"run directory {run_dir}: cannot write there ({exc.strerror})"
                              ) from None
        raise EngineError(atomic.storage_message(refused, run_dir / "config.toml",
                                                 "writing config.toml")) from None


def _run_stages(stages: "_StageRunner", config: RunConfig, run_dir: Path, emit: Emit,
                control: RunControl, resume: str | None) -> None:
    """The pipeline itself: each stage with its inputs, in order. ``stages.run`` ends the run
    (``_Done``) when asked for a stage past the last one (``--until``)."""
    # torch and the tokenizers library load here, not when the app imports this module
    import torch

    from engine.batching import run_batches_stage
    from engine.data.stage import run_data_stage
    from engine.device import use_expandable_segments
    from engine.encode import run_encode_stage
    from engine.preflight import preflight
    from engine.tokenizer.stage import run_tokenizer_stage
    from engine.train import run_model_stage, run_train_stage

    if config.training.device != "cpu" and torch.cuda.is_available():
        allocator = use_expandable_segments()  # before anything starts CUDA in this process
        if allocator:
            emit(Notice(text=allocator))
    emit(preflight(config, run_dir))
    if config.training.max_tokens == "auto":  # measured (or fit.json reused) before any stage
        config = _resolve_auto_max_tokens(config, run_dir, emit)
        config, batch_line = with_effective_batch(config, distributed.world_size())
        if batch_line:
            emit(Notice(text=batch_line))
    # under torchrun rank 0 writes corpus/ first (MAIN_FIRST); the others only hash the same
    # pairs, and the ranks' fingerprints must agree (distributed.run_stage)
    corpus = stages.run("data", lambda: run_data_stage(config.data, emit, run_dir,
                                                       write_train=distributed.is_main()))
    tokenizers = stages.run("tokenizer", lambda: run_tokenizer_stage(
        config.tokenizer, corpus, run_dir, emit, control))
    data = stages.run("encode", lambda: run_encode_stage(
        corpus, tokenizers, config.model.max_len, run_dir, emit, control))
    batches = stages.run("batches", lambda: run_batches_stage(data, config.training))
    state = stages.run("model", lambda: run_model_stage(config, tokenizers, run_dir, emit,
                                                        resume))
    stages.run("train", lambda: run_train_stage(config, state, corpus, tokenizers, data,
                                                batches, run_dir, emit, control))


def _resolve_auto_max_tokens(config: RunConfig, run_dir: Path, emit: Emit) -> RunConfig:
    """training.max_tokens = "auto": rank 0 fits (engine/fit.py), every rank uses its answer."""
    import dataclasses

    from engine.events import Notice
    from engine.fit import resolve_auto

    def on_main() -> float:
        return resolve_auto(config, run_dir, lambda text: emit(Notice(text=text))
                            ).training.max_tokens

    max_tokens = int(distributed.from_main(on_main))
    training = dataclasses.replace(config.training, max_tokens=max_tokens)
    return dataclasses.replace(config, training=training)


class _Done(Exception):
    """The run's last stage (``--until``) has finished."""


class _StageRunner:
    """What happens around every stage: a stop check, the events, the torchrun ordering."""

    def __init__(self, config: RunConfig, run_dir: Path, emit: Emit, control: RunControl,
                 names: list[str]) -> None:
        self.config, self.run_dir, self.emit, self.control = config, run_dir, emit, control
        self.names = names
        self.current = ""  # the stage now running, for RunPaused/RunResumed/RunFailed

    def run(self, name: str, call: Callable[[], StageResult[T]]) -> T:
        if self.current == self.names[-1]:
            raise _Done()
        if distributed.agree_control(self.control, patient=True):  # every rank, while paused
            raise RunStopped()
        self.current = name
        self.emit(StageStarted(stage=name, index=STAGES.index(name) + 1, total=len(self.names)))
        started = time.monotonic()
        result = distributed.run_stage(name, call, self.config, self.run_dir)
        self.emit(StageFinished(stage=name, seconds=round(time.monotonic() - started, 3),
                                reused=result.reused, info=result.info))
        return result.output
