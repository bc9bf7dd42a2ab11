"""The stage runner: config -> data -> tokenizer -> encode -> batches -> model -> train.

Each stage is a function of the run context that returns a ``StageResult``; its output is kept in
``ctx.outputs[stage]`` for the stages after it. A stage whose inputs have not changed reuses what
an earlier run left in the run directory and says so (``reused``).
"""

from __future__ import annotations

import importlib
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from engine import distributed
from engine.config import RunConfig
from engine.control import RunControl, RunStopped
from engine.errors import EngineError
from engine.events import (Emit, JsonlWriter, RunFailed, RunFinished, RunPaused, RunResumed,
                           RunStarted, StageFinished, StageStarted, fan_out)

# stage name -> "module:function"; the function takes a RunContext and returns a StageResult
STAGES: dict[str, str] = {
    "data": "engine.data:run_data_stage",
    "tokenizer": "engine.tokenizer:run_tokenizer_stage",
    "encode": "engine.encode:run_encode_stage",
    "batches": "engine.batching:run_batches_stage",
    "model": "engine.train:run_model_stage",
    "train": "engine.train:run_train_stage",
}


@dataclass
class RunContext:
    config: RunConfig
    run_dir: Path
    emit: Emit
    control: RunControl
    resume: str | None = None  # "last" or a checkpoint path, for the train stage
    outputs: dict[str, Any] = field(default_factory=dict)
    stage: str = ""  # the stage now running


@dataclass
class StageResult:
    output: Any
    info: dict[str, Any] = field(default_factory=dict)  # totals shown when the stage ends
    reused: bool = False


def stage_names(until: str | None = None) -> list[str]:
    names = list(STAGES)
    if until is not None:
        if until not in STAGES:
            raise EngineError(f"--until {until!r}: unknown stage (stages: {', '.join(STAGES)})")
        names = names[: names.index(until) + 1]
    return names


def _stage_function(name: str) -> Callable[[RunContext], StageResult]:
    module, _, function = STAGES[name].partition(":")
    return getattr(importlib.import_module(module), function)


def run(config: RunConfig, run_dir: Path, emit: Emit, control: RunControl | None = None,
        until: str | None = None, resume: str | None = None) -> str:
    """Run the stages up to ``until``; returns "finished", "stopped" or "failed".

    Every event also goes to ``run_dir/events.jsonl``; the resolved config is written to
    ``run_dir/config.toml``. Failures become a ``RunFailed`` event, never an exception.
    In a torchrun job only rank 0 writes those files (see engine/distributed.py).
    """
    from engine.preflight import preflight  # torch import; keep `import engine.pipeline` light

    names = stage_names(until)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    writer = None
    if distributed.is_main():
        (run_dir / "config.toml").write_text(config.to_toml(), encoding="utf-8")
        writer = JsonlWriter(run_dir / "events.jsonl")
        emit = fan_out(writer, emit)
        if config.log.tensorboard:  # a consumer like the others; closes itself at the run's end
            from engine.tensorboard import TensorBoardWriter

            emit = fan_out(TensorBoardWriter(run_dir), emit)
    control = control or RunControl()
    ctx = RunContext(config=config, run_dir=run_dir, emit=emit, control=control, resume=resume)

    def on_control(change: str) -> None:
        if change == "paused":
            emit(RunPaused(stage=ctx.stage))
        elif change == "resumed":
            emit(RunResumed(stage=ctx.stage, paused_seconds=round(control.paused_seconds, 3)))

    control.add_listener(on_control)
    started = time.monotonic()
    emit(RunStarted(run_dir=str(run_dir), preset=config.name, stages=names))
    status = "finished"
    try:
        emit(preflight(config, run_dir))
        for index, name in enumerate(names, start=1):
            if control.checkpoint():
                raise RunStopped()
            ctx.stage = name
            emit(StageStarted(stage=name, index=index, total=len(names)))
            stage_started = time.monotonic()
            result = distributed.run_stage(name, _stage_function(name), ctx)
            ctx.outputs[name] = result.output
            emit(StageFinished(stage=name, seconds=round(time.monotonic() - stage_started, 3),
                               reused=result.reused, info=result.info))
    except RunStopped:
        status = "stopped"
    except EngineError as exc:
        status = "failed"
        emit(RunFailed(stage=ctx.stage, message=str(exc), details=getattr(exc, "details", [])))
    except Exception as exc:  # a bug or an environment problem: keep the traceback in the log
        status = "failed"
        details = traceback.format_exc().splitlines()[-12:]
        emit(RunFailed(stage=ctx.stage, message=f"{type(exc).__name__}: {exc}", details=details))
    finally:
        control.remove_listener(on_control)
    if status != "failed":
        emit(RunFinished(status=status, seconds=round(time.monotonic() - started, 3)))
    if writer is not None:
        writer.close()
    return status
