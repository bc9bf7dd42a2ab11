"""The stages' names, in running order, and what every stage returns.

A leaf module (no torch): the CLI's --until, the app's stage list and the distributed ordering
all derive from ``STAGES``; engine/pipeline.py runs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from engine.errors import EngineError

STAGES = ("data", "tokenizer", "encode", "batches", "model", "train")
# the stages that write the run directory's shared files: in a torchrun job rank 0 runs them
# first and the other ranks then reuse its output
MAIN_FIRST = STAGES[:STAGES.index("encode") + 1]

Output = TypeVar("Output")


@dataclass
class StageResult(Generic[Output]):
    output: Output
    info: dict[str, Any] = field(default_factory=dict)  # totals shown when the stage ends
    reused: bool = False  # an earlier run's output in the run directory was used as it was


def stage_names(until: str | None = None) -> list[str]:
    """The stages a run with ``--until`` runs; an EngineError for an unknown name."""
    names = list(STAGES)
    if until is not None:
        if until not in STAGES:
            raise EngineError(f"--until {until!r}: unknown stage (stages: {', '.join(STAGES)})")
        names = names[: names.index(until) + 1]
    return names
