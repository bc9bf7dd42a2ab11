"""DashboardState: everything the dashboard shows, built by applying a run's events one at a time.

What the events say is folded by the engine's one fold of a run's history
(``engine.history.RunHistory``, in ``run``); this class adds what only the screen needs: where the
app stands with the run (``Status``: starting, stopping... as the app asked), stage timers, the
tokenizer's and the data stages' latest progress, per-step sparkline histories, memory
readings, the log, and ``versions`` for the panels' redraw bookkeeping.

Applying an event is cheap (a few assignments) so that every event can be applied as it arrives,
however fast they come; drawing is what costs, and the panels do it at a bounded rate, each
only when the part of the state it shows has changed (``versions``).

A run started from the app and a run followed with ``--attach`` are the same to it: the run
process writes its events to ``events.jsonl`` and the app reads them back, each with the
wall-clock time it happened (``at``).
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

from engine.events import (
    BatchProgress,
    BatchSkipped,
    CheckpointSaved,
    DataProgress,
    DownloadProgress,
    EncodeProgress,
    EpochSummary,
    Event,
    MemorySample,
    MergeProgress,
    Preflight,
    RunFailed,
    RunFinished,
    RunPaused,
    RunResumed,
    RunStarted,
    StageFinished,
    StageStarted,
    TestBleu,
    WordCountProgress,
)
from engine.history import MAX_CURVE_POINTS, Curve, RunHistory
from engine.memory import MemoryReading
from engine.stages import STAGES
from engine.versions import versions_text
from tui.format import duration
from tui.log_lines import log_lines
from tui.memory_chart import MemoryHistory
from tui.tail import DamagedLines

# The stages of a full run, in order; shown before a run says which stages it has.
STAGE_ORDER = STAGES  # engine/stages.py: the one list of stage names


class Status(str, Enum):
    """Where the run the app shows stands. A str, so that it reads and compares as its word."""

    IDLE = "idle"  # nothing started yet
    STARTING = "starting"  # asked to start; no event from the run yet
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"  # a stop was asked; the run stops at its next safe point
    STALLED = "stalled"  # live, but no batch for ten times its median batch time
    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"
    DEAD = "dead"  # the run process is gone without an end event

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def active(self) -> bool:
        """A run is in progress."""
        return self in (Status.STARTING, Status.RUNNING, Status.PAUSED, Status.STOPPING,
                        Status.STALLED)


MAX_RATE_POINTS = 240  # merges/s sparkline history, likewise
LOG_LINES = 1000
PEAK_HISTORY = 120  # memory samples (one every few seconds) in the peak-memory sparkline
HISTORY = ("lr", "tokens_per_second", "gnorm", "loss_scale")  # per-step histories beside the loss


@dataclass
class StageView:
    name: str
    status: str = "pending"  # pending | running | done | reused | failed | stopped
    started_at: float | None = None
    seconds: float | None = None  # when ended
    info: dict[str, Any] = field(default_factory=dict)
    paused_at: float | None = None  # while the run is paused in this stage: its clock stands
    paused_seconds: float = 0.0  # paused in this stage before


class DashboardState:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.versions: Counter[str] = Counter()
        self.run = RunHistory()  # what the followed run's events say (engine/history.py)
        self.status = Status.IDLE
        self.reason = ""  # why it failed
        self.preset = ""
        self.run_dir = ""
        self.ran_with = ""  # what the run ran with (RunStarted.versions), one line
        self.ended_seconds: float | None = None  # of an ended (or dead) run
        self.stages: dict[str, StageView] = {name: StageView(name) for name in STAGE_ORDER}
        self.current_stage = ""
        # tokenizer
        # prep: the running stage's latest reading / download / encoding progress, if any
        self.prep: DataProgress | DownloadProgress | EncodeProgress | None = None
        self.words: WordCountProgress | None = None
        self.merges: MergeProgress | None = None
        self.merge_rates = Curve()  # (elapsed, merges per second)
        # what people watch beside the loss, per step: learning rate, tokens/s, gradient norm,
        # fp16 loss scale (the last two only when the engine reports them)
        self.history = {name: Curve() for name in HISTORY}
        self._rewinds = 0  # the run's steps went back this many times (history forgot after)
        self.memory: MemorySample | None = None  # the engine's latest sample
        self.peak_history: deque[int] = deque(maxlen=PEAK_HISTORY)  # batch peaks, sample by sample
        self.memory_history = MemoryHistory()  # the run's samples over time, for the chart
        self.reading: MemoryReading | None = None  # the memory panel's own probe of this machine
        self.max_tokens: int | None = None  # from the config, until a MemorySample says
        self.log: deque[str] = deque(maxlen=LOG_LINES)
        self.log_total = 0  # lines ever logged; the log panel writes the ones it has not
        self.last_event_at: float | None = None  # when the last event applied happened

    # --- what the run's events say (engine.history.RunHistory), under the panels' names ---

    @property
    def started_at(self) -> float | None:
        return self.run.started_at

    @property
    def batch(self) -> BatchProgress | None:
        return self.run.batch

    @property
    def summaries(self) -> list[EpochSummary]:
        return self.run.summaries

    @property
    def train_curve(self) -> Curve:
        """(step, smoothed loss)."""
        return self.run.train_curve

    @property
    def checkpoints(self) -> dict[str, CheckpointSaved]:
        """By name: a later save of checkpoint_last.pt replaces the row."""
        return self.run.checkpoints

    @property
    def skipped(self) -> int:
        return self.run.skipped_batches

    # --- what the app itself knows (not from events) ---

    def _touch(self, *parts: str) -> None:
        for part in parts:
            self.versions[part] += 1

    def note(self, text: str, at: float | None = None) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(self.clock() if at is None else at))
        self.log.append(f"{stamp} {text}")
        self.log_total += 1
        self._touch("log")

    def set_status(self, status: Status, reason: str = "") -> None:
        self.status, self.reason = Status(status), reason
        self._touch("status")

    def config_error(self, message: str) -> None:
        """A preset or override that could not be loaded: nothing started."""
        self.set_status(Status.FAILED, message)
        self.note(f"error: {message}")

    def starting(self, preset: str, run_dir: str, max_tokens: int | str | None = None,
                 fresh: bool = False) -> None:
        """A run is being started (or attached to) in ``run_dir``; ``fresh``: what is shown
        is read again from its events.jsonl."""
        if fresh or run_dir != self.run_dir:  # nothing shown so far belongs to it
            self._forget_run()
        self.preset, self.run_dir = preset, run_dir
        # "auto" (measured by the fit) is known once the run's first MemorySample says
        self.max_tokens = max_tokens if isinstance(max_tokens, int) else None
        self.set_status(Status.STARTING)
        self._touch("memory")

    def earlier_checkpoints(self, run_dir: str, saved: list[CheckpointSaved]) -> None:
        """Before any run of this session: what an earlier run left, offered for resume."""
        if self.started_at is not None or self.active:
            return  # a run of this session owns the table
        self.run_dir = run_dir
        self.run.checkpoints = {e.name: e for e in saved}
        self._touch("checkpoints")
        if saved:
            self.note(f"{len(self.checkpoints)} checkpoint(s) of an earlier run in {run_dir}: "
                      "select one to resume from it")

    def _forget_run(self) -> None:
        self.ran_with = ""
        self.run, self._rewinds = RunHistory(), 0
        self.words = self.merges = self.memory = self.prep = None
        self.peak_history.clear()
        self.memory_history.clear()
        self.stages = {name: StageView(name) for name in STAGE_ORDER}
        self.current_stage = ""
        self.ended_seconds = None
        self.merge_rates = Curve()
        self.history = {name: Curve() for name in HISTORY}
        self._touch("stages", "tokenizer", "training", "loss", "checkpoints", "memory")

    def set_reading(self, reading: MemoryReading) -> None:
        self.reading = reading
        self._touch("memory")

    def stopping(self) -> None:
        if self.status.active:
            self.set_status(Status.STOPPING)
            self.note("stop requested: the run stops at its next safe point")

    def process_seen(self, state: str, detail: str = "") -> None:
        """What the run directory says of the run process (engine.runs.summarize): "dead" (gone
        without an end event), "stalled" (live, no batch for long) or live again. Events say
        everything else; an end event, once read, is final."""
        if state == "dead" and (self.active or self.status == Status.IDLE):
            self.set_status(Status.DEAD, detail)
            if self.started_at is not None and self.last_event_at is not None:
                self.ended_seconds = max(0.0, self.last_event_at - self.started_at)
            saved = self.stop_checkpoint()
            self.note("the run process is gone without an end event"
                      + (f" ({detail})" if detail else "")
                      + (f"; its last checkpoint is {saved.name} (step {saved.step:,}): select it "
                         "on the checkpoints page and press r to resume" if saved else ""))
        elif state == "stalled" and self.status == Status.RUNNING:
            self.set_status(Status.STALLED)
            self.note("warning: no batch for ten times the median batch time (stalled?)")
        elif state in ("running", "paused") and self.status in (Status.STALLED, Status.DEAD):
            self.set_status(Status(state))

    def launch_failed(self, reason: str) -> None:
        """The run process ended before it said anything (a refused start, say)."""
        self.set_status(Status.FAILED, reason)
        self.note(f"failed: {reason}")

    def stop_checkpoint(self) -> CheckpointSaved | None:
        """The checkpoint that holds a stopped (or dead) run's state: the latest step, and at
        that step checkpoint_last.pt (what --resume last reads), else the last one saved."""
        if not self.checkpoints:
            return None
        return max(self.checkpoints.values(), key=lambda saved: (
            saved.step, saved.name == "checkpoint_last.pt", saved.saved_at))

    @property
    def active(self) -> bool:
        return self.status.active

    # --- derived values the panels show ---

    def elapsed(self) -> float | None:
        """Wall-clock seconds since the run started, pauses included (as the engine counts)."""
        if self.started_at is None:
            return None
        if self.ended_seconds is not None:
            return self.ended_seconds
        return max(0.0, self.clock() - self.started_at)

    def stage_seconds(self, stage: StageView) -> float | None:
        """The stage's time, its pauses left out (while paused its clock stands)."""
        if stage.seconds is not None:
            return stage.seconds
        if stage.started_at is None:
            return None
        now = stage.paused_at if stage.paused_at is not None else self.clock()
        return max(0.0, now - stage.started_at - stage.paused_seconds)

    def merge_rate(self) -> float | None:
        """Merges per second now; for a phase that ended between two progress reports (the
        engine's short window then holds no merge), the phase's average: never 0.0 for a phase
        that did merges."""
        m = self.merges
        if m is None:
            return None
        if m.per_second > 0 or m.merges <= 0:
            return m.per_second
        return m.merges / m.elapsed if m.elapsed > 0 else None

    def run_eta(self) -> float | None:
        """Seconds to the end of training: this epoch's ETA plus the epochs after it."""
        b = self.batch
        if b is None or b.eta is None:
            return None
        if self.summaries:
            per_epoch = self.summaries[-1].epoch_seconds
        elif b.batches_per_second > 0:
            per_epoch = b.batches / b.batches_per_second
        else:
            return None
        return b.eta + (b.epochs - b.epoch) * per_epoch

    # --- events ---

    def apply(self, event: Event | DamagedLines, at: float | None = None) -> None:
        at = self.clock() if at is None else at
        if isinstance(event, DamagedLines):  # what the reader skipped: a line in the log, no more
            self.note(event.text, at)
            return
        self.last_event_at = at
        self.run.apply(event, at)
        handler = getattr(self, f"_on_{type(event).__name__}", None)
        if handler is not None:
            handler(event, at)
        for line in log_lines(event):
            self.note(line, at)

    def _on_RunStarted(self, e: RunStarted, at: float) -> None:
        self.preset, self.run_dir = e.preset, e.run_dir
        self.ran_with = versions_text(e.versions)  # torch, CUDA, cuDNN, NCCL, driver, device
        self.ended_seconds = None
        self.stages = {name: StageView(name) for name in e.stages}
        self.current_stage = ""
        self.set_status(Status.STOPPING if self.status == Status.STOPPING else Status.RUNNING)
        self._touch("stages", "tokenizer", "training")

    def _on_Preflight(self, e: Preflight, at: float) -> None:
        self._touch("memory")

    def _on_StageStarted(self, e: StageStarted, at: float) -> None:
        stage = self.stages.setdefault(e.stage, StageView(e.stage))
        stage.status, stage.started_at, stage.seconds = "running", at, None
        self.current_stage = e.stage
        self.prep = None  # progress belongs to the stage that sent it
        self._touch("stages", "tokenizer")

    def _on_StageFinished(self, e: StageFinished, at: float) -> None:
        stage = self.stages.setdefault(e.stage, StageView(e.stage))
        stage.status = "reused" if e.reused else "done"
        stage.seconds, stage.info = e.seconds, dict(e.info)
        self._touch("stages", "tokenizer")

    def _on_RunPaused(self, e: RunPaused, at: float) -> None:
        if self.status != Status.STOPPING:
            self.set_status(Status(self.run.state.value))
        stage = self.stages.get(self.current_stage or "")
        if stage is not None and stage.seconds is None and stage.paused_at is None:
            stage.paused_at = at
        self._touch("stages")

    def _on_RunResumed(self, e: RunResumed, at: float) -> None:
        if self.status != Status.STOPPING:
            self.set_status(Status(self.run.state.value))
        for stage in self.stages.values():
            if stage.paused_at is not None:
                stage.paused_seconds += max(0.0, at - stage.paused_at)
                stage.paused_at = None
        self._touch("stages")

    def _on_RunFailed(self, e: RunFailed, at: float) -> None:
        self._end_stage("failed", at)
        self.ended_seconds = self.run.seconds
        self.set_status(Status.FAILED, e.message)

    def _on_RunFinished(self, e: RunFinished, at: float) -> None:
        self._end_stage("stopped", at)
        self.ended_seconds = self.run.seconds
        self.set_status(Status(self.run.state.value))  # (an unknown end status: failed)
        self.note(f"run {e.status} after {duration(e.seconds)}", at)
        saved = self.stop_checkpoint()
        if self.status == Status.STOPPED and saved is not None:
            self.note(f"its state is in {saved.name} (epoch {saved.epoch}, step {saved.step:,}): "
                      "select it on the checkpoints page and press r to resume", at)

    def _end_stage(self, status: str, at: float) -> None:
        stage = self.stages.get(self.current_stage)
        if stage is not None and stage.status == "running":
            stage.status = status
            if stage.paused_at is not None:  # stopped while paused: the pause ends here
                stage.paused_seconds += max(0.0, at - stage.paused_at)
                stage.paused_at = None
            stage.seconds = max(0.0, at - (stage.started_at or at) - stage.paused_seconds)
            self._touch("stages")

    def _on_DataProgress(self, e: DataProgress | EncodeProgress, at: float) -> None:
        self.prep = e  # reading and encoding show in the same place
        self._touch("tokenizer")

    _on_EncodeProgress = _on_DataProgress

    def _on_DownloadProgress(self, e: DownloadProgress, at: float) -> None:
        self.prep = e
        self._touch("tokenizer")

    def _on_WordCountProgress(self, e: WordCountProgress, at: float) -> None:
        self.words = e
        self._touch("tokenizer")

    def _on_MergeProgress(self, e: MergeProgress, at: float) -> None:
        if self.merges is not None and (e.merges < self.merges.merges
                                        or e.language != self.merges.language):
            self.merge_rates = Curve()  # a new tokenizer (or the second language) starts over
        self.merges = e
        self.merge_rates.add(e.elapsed, self.merge_rate() or 0.0, MAX_RATE_POINTS)
        self._touch("tokenizer")

    def _on_BatchProgress(self, e: BatchProgress, at: float) -> None:
        if self.run.rewinds != self._rewinds:
            # a new run (or a resume from an earlier checkpoint) in the same run dir: the loss
            # curve forgot the steps it goes back over, and so do the histories beside it
            self._rewinds = self.run.rewinds
            for curve in self.history.values():
                curve.drop_from(e.step)
        for name, value in (("lr", e.lr), ("tokens_per_second", e.tokens_per_second),
                            ("gnorm", e.gnorm), ("loss_scale", e.loss_scale)):
            if value is not None and math.isfinite(value):
                self.history[name].add(e.step, value, MAX_CURVE_POINTS)
        self._touch("training", "loss")

    def _on_EpochSummary(self, e: EpochSummary, at: float) -> None:
        self._touch("training", "loss")

    def _on_TestBleu(self, e: TestBleu, at: float) -> None:
        self._touch("training", "loss")

    def _on_CheckpointSaved(self, e: CheckpointSaved, at: float) -> None:
        self._touch("checkpoints")

    def _on_BatchSkipped(self, e: BatchSkipped, at: float) -> None:
        self._touch("training")

    def _on_MemorySample(self, e: MemorySample, at: float) -> None:
        self.memory = e
        self.max_tokens = e.max_tokens
        if e.recent_peak is not None:
            self.peak_history.append(e.recent_peak)
        self.memory_history.add(at, e)
        self._touch("memory")
