"""A run's history: what its events say, folded one event at a time (``RunHistory.apply``).

The one fold of ``events.jsonl``: the app's dashboard state (tui/state.py) wraps it, and
``transformer-train status``, the run list (engine/runs.py) and TensorBoard (engine/tensorboard.py)
read it. It holds what the events say and nothing else: whether a run's process still lives
(dead, stalled) is judged by engine/runs.py from the lock and heartbeat; timers, memory readings
and redraw bookkeeping are the app's.

Applying an event is cheap (a few assignments), so a long run's file replays in a moment and a
live run's events fold as they come. No Textual and no torch here.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from engine.eventlog import EventLog
from engine.events import (
    Alert,
    BatchProgress,
    BatchSkipped,
    CheckpointSaved,
    EpochSummary,
    Event,
    Notice,
    Preflight,
    RunFailed,
    RunFinished,
    RunPaused,
    RunResumed,
    RunStarted,
    StageStarted,
    TestBleu,
)

LOSS_SMOOTHING = 0.9  # EMA weight of the history, debiased like TensorBoard's smoothing
MAX_CURVE_POINTS = 4000  # a curve halves its resolution beyond this (a long run, many steps)
RECENT_BATCHES = 50  # batch times kept for the median a stall is judged by
NOTICES = 20  # the last notices kept


class RunState(str, Enum):
    """Where a run stands. The fold sets NEW, RUNNING, PAUSED, FINISHED, STOPPED and FAILED from
    the events; engine/runs.py adds DEAD and STALLED from the run process's lock and heartbeat."""

    RUNNING = "running"
    PAUSED = "paused"
    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"
    DEAD = "dead"
    STALLED = "stalled"
    NEW = "new"  # no run yet: nothing in events.jsonl

    @property
    def ended(self) -> bool:
        """An end event says so (finished, stopped, failed)."""
        return self in (RunState.FINISHED, RunState.STOPPED, RunState.FAILED)


@dataclass
class Curve:
    """(x, y) points that keep a bounded size: when full, every other point is dropped and from
    then on only every ``stride``-th point is kept. The latest point is always shown."""

    xs: list[float] = field(default_factory=list)
    ys: list[float] = field(default_factory=list)
    stride: int = 1
    since_kept: int = 0
    last: tuple[float, float] | None = None

    def add(self, x: float, y: float, limit: int) -> None:
        self.last = (x, y)
        self.since_kept += 1
        if self.xs and self.since_kept < self.stride:
            return
        self.since_kept = 0
        self.xs.append(x)
        self.ys.append(y)
        if len(self.xs) > limit:
            self.xs, self.ys = self.xs[::2], self.ys[::2]
            self.stride *= 2

    def points(self) -> tuple[list[float], list[float]]:
        if self.last is not None and (not self.xs or self.xs[-1] != self.last[0]):
            return self.xs + [self.last[0]], self.ys + [self.last[1]]
        return self.xs, self.ys

    def drop_from(self, x: float) -> None:
        """Forget points at or after x (a run restarted from an earlier step)."""
        keep = next((i for i, value in enumerate(self.xs) if value >= x), len(self.xs))
        del self.xs[keep:], self.ys[keep:]
        self.last, self.since_kept = None, self.stride  # the next point is kept


class RunHistory:
    """Everything a run's events say, as of the last event applied. ``at`` is the wall-clock
    time an event happened (the ``time`` of its line), None when not known."""

    def __init__(self) -> None:
        self.events = 0  # events applied
        self.state = RunState.NEW
        self.preset = self.run_dir = ""
        self.processes = 1  # torchrun ranks of the last start
        self.stages: list[str] = []  # the stages of the last start, in order
        self.stage = ""  # the stage running (or the last one started)
        self.message = ""  # why the run failed
        self.started_at: float | None = None  # time of the last RunStarted
        self.ended_at: float | None = None  # time of its end event
        self.seconds: float | None = None  # wall seconds from start to end, once ended
        self.last_event_at: float | None = None
        self.preflight: Preflight | None = None
        # training
        self.batch: BatchProgress | None = None  # the last progress
        self.epoch = self.epochs = self.step = 0
        self.summaries: list[EpochSummary] = []  # one per epoch; a resume replaces later ones
        self.train_loss = Curve()  # (step, loss of the batch)
        self.train_curve = Curve()  # (step, loss smoothed), what charts show
        self._ema = self._ema_weight = 0.0
        self.rewinds = 0  # times the steps went back (a resume from an earlier checkpoint)
        self.tokens = 0.0  # target tokens trained on (from the progress events' rate x time)
        self._segment_tokens = 0.0  # ... of the epoch (of this process) the last progress was in
        self.token_curve = Curve()  # (step, tokens trained on by then): x by tokens (tokens_at)
        self.cpu_seconds: float | None = None  # the run process's CPU time at its last report
        self.best_val_loss: tuple[float, int] | None = None  # (value, step) of the epochs now
        self.best_bleu: tuple[float, int] | None = None
        self.test: TestBleu | None = None  # the test BLEU at the end
        self.checkpoints: dict[str, CheckpointSaved] = {}  # by name: a later save replaces
        self.last_checkpoint: str | None = None  # path of the last one saved
        self.skipped_batches = 0  # BatchSkipped (out of memory, non-finite loss)
        self.notices: deque[tuple[float | None, Notice]] = deque(maxlen=NOTICES)
        self.last_alert: Alert | None = None  # engine/alerts.py: the last the run raised
        self.last_alert_at: float | None = None
        # what a stall is judged by (engine/runs.py)
        self.last_batch_at: float | None = None
        self.epoch_end = False  # the last batch was the epoch's last: validating, saving
        self.batch_seconds: deque[float] = deque(maxlen=RECENT_BATCHES)  # recent s/batch

    @property
    def paused(self) -> bool:
        return self.state == RunState.PAUSED

    @property
    def ended(self) -> bool:
        return self.state.ended

    @property
    def val_loss(self) -> float | None:
        """The last validation's loss (and ``bleu`` its BLEU, None when not scored)."""
        return self.summaries[-1].val_loss if self.summaries else None

    @property
    def bleu(self) -> float | None:
        return self.summaries[-1].bleu if self.summaries else None

    def validation(self) -> list[tuple[int, float]]:
        """(step, validation loss) of each epoch."""
        return [(s.step, s.val_loss) for s in self.summaries]

    def bleu_points(self) -> list[tuple[int, float]]:
        """(step, BLEU) of each epoch BLEU was scored at."""
        return [(s.step, s.bleu) for s in self.summaries if s.bleu is not None]

    def tokens_at(self, steps: list[float]) -> list[float]:
        """The tokens trained on by each of ``steps`` (sorted), read off ``token_curve``:
        exact at its points, interpolated between them (it keeps a bounded number)."""
        xs, ys = self.token_curve.points()
        if not xs:
            return [0.0] * len(steps)
        tokens = []
        for step in steps:
            i = bisect.bisect_left(xs, step)
            if i >= len(xs):
                tokens.append(ys[-1])
            elif xs[i] == step or i == 0:
                tokens.append(ys[i])
            else:
                share = (step - xs[i - 1]) / (xs[i] - xs[i - 1])
                tokens.append(ys[i - 1] + share * (ys[i] - ys[i - 1]))
        return tokens

    def wall_seconds(self) -> float | None:
        """From the start to the end, or to the last event while it runs."""
        if self.seconds is not None:
            return self.seconds
        if self.started_at is None or self.last_event_at is None:
            return None
        return max(0.0, self.last_event_at - self.started_at)

    # --- events ---

    def apply(self, event: Event, at: float | None = None) -> None:
        self.events += 1
        if at is not None:
            self.last_event_at = at
        if self.state == RunState.NEW:
            self.state = RunState.RUNNING  # a run began, even if its RunStarted line is lost
        handler = getattr(self, f"_on_{type(event).__name__}", None)
        if handler is not None:
            handler(event, at)

    def _on_RunStarted(self, e: RunStarted, at: float | None) -> None:
        self.state, self.preset, self.run_dir = RunState.RUNNING, e.preset, e.run_dir
        self.processes, self.stages = e.processes, list(e.stages)
        self.started_at, self.ended_at, self.seconds, self.message = at, None, None, ""
        self.cpu_seconds = None  # a new process: its CPU time starts again (as the wall time)
        self.last_batch_at, self.epoch_end = None, False

    def _on_Preflight(self, e: Preflight, at: float | None) -> None:
        self.preflight = e

    def _on_StageStarted(self, e: StageStarted, at: float | None) -> None:
        self.stage = e.stage

    def _on_RunPaused(self, e: RunPaused, at: float | None) -> None:
        if not self.ended:
            self.state = RunState.PAUSED

    def _on_RunResumed(self, e: RunResumed, at: float | None) -> None:
        if not self.ended:
            self.state = RunState.RUNNING

    def _on_RunFinished(self, e: RunFinished, at: float | None) -> None:
        # (an end status this version does not know counts as a failure, as before)
        self.state = {"finished": RunState.FINISHED, "stopped": RunState.STOPPED}.get(
            e.status, RunState.FAILED)
        self.ended_at, self.seconds = at, e.seconds
        self.cpu_seconds = e.cpu_seconds if e.cpu_seconds is not None else self.cpu_seconds

    def _on_RunFailed(self, e: RunFailed, at: float | None) -> None:
        self.state, self.ended_at, self.message = RunState.FAILED, at, e.message
        if at is not None:
            self.seconds = max(0.0, at - (self.started_at or at))

    def _on_BatchProgress(self, e: BatchProgress, at: float | None) -> None:
        previous = self.batch
        if previous is not None and e.step < previous.step:
            # a new run (or a resume from an earlier checkpoint) in the same run dir
            self.rewinds += 1
            self.train_loss.drop_from(e.step)
            self.train_curve.drop_from(e.step)
            self.token_curve.drop_from(e.step)
            self._ema = self._ema_weight = 0.0
        self._count_tokens(previous, e)
        self.token_curve.add(e.step, self.tokens, MAX_CURVE_POINTS)
        self.batch = e
        self.epoch, self.epochs, self.step = e.epoch, e.epochs, e.step
        self.last_batch_at, self.epoch_end = at, e.batch >= e.batches
        if e.batches_per_second > 0:
            self.batch_seconds.append(1.0 / e.batches_per_second)
        if math.isfinite(e.loss):
            self.train_loss.add(e.step, e.loss, MAX_CURVE_POINTS)
            self._ema = LOSS_SMOOTHING * self._ema + (1 - LOSS_SMOOTHING) * e.loss
            self._ema_weight = LOSS_SMOOTHING * self._ema_weight + (1 - LOSS_SMOOTHING)
            self.train_curve.add(e.step, self._ema / self._ema_weight, MAX_CURVE_POINTS)

    def _count_tokens(self, previous: BatchProgress | None, e: BatchProgress) -> None:
        """``tokens_per_second`` x ``elapsed`` is what this epoch has trained on since this
        process began it; a new epoch (or process) starts a new segment."""
        segment = e.tokens_per_second * e.elapsed if math.isfinite(e.tokens_per_second) else 0.0
        if previous is None or e.epoch != previous.epoch or e.elapsed < previous.elapsed:
            self._segment_tokens = 0.0
        self.tokens += max(segment - self._segment_tokens, 0.0)
        self._segment_tokens = segment

    def _on_EpochSummary(self, e: EpochSummary, at: float | None) -> None:
        self.summaries = [s for s in self.summaries if s.epoch < e.epoch] + [e]
        self.epoch, self.epochs, self.step = e.epoch, e.epochs, e.step
        self.epoch_end = False
        if e.cpu_seconds is not None:
            self.cpu_seconds = e.cpu_seconds
        self.last_batch_at = at  # the next epoch's first batch is measured from here
        losses = [(s.val_loss, s.step) for s in self.summaries if math.isfinite(s.val_loss)]
        bleus = [(s.bleu, s.step) for s in self.summaries
                 if s.bleu is not None and math.isfinite(s.bleu)]
        self.best_val_loss = min(losses, key=lambda p: p[0]) if losses else None
        self.best_bleu = max(bleus, key=lambda p: p[0]) if bleus else None

    def _on_TestBleu(self, e: TestBleu, at: float | None) -> None:
        self.test = e

    def _on_CheckpointSaved(self, e: CheckpointSaved, at: float | None) -> None:
        self.checkpoints[e.name] = e
        self.last_checkpoint = e.path
        self.step = max(self.step, e.step)

    def _on_BatchSkipped(self, e: BatchSkipped, at: float | None) -> None:
        self.skipped_batches += 1

    def _on_Notice(self, e: Notice, at: float | None) -> None:
        self.notices.append((at, e))

    def _on_Alert(self, e: Alert, at: float | None) -> None:
        self.last_alert, self.last_alert_at = e, at


class HistoryFile:
    """A run's ``events.jsonl`` and the history folded from it so far: ``update()`` folds what
    was appended since the last call (a file replaced by a new run is folded anew)."""

    def __init__(self, path: Path | str) -> None:
        self.log = EventLog(path)
        self.history = RunHistory()
        self._lock = threading.Lock()  # (the run list and a watcher thread may both update)

    @property
    def skipped(self) -> int:
        """Damaged lines skipped (see engine/eventlog.py)."""
        return self.log.skipped

    def update(self) -> RunHistory:
        with self._lock:
            while True:
                restarts = self.log.restarts
                events = self.log.read_new()
                if self.log.restarts != restarts:
                    self.history = RunHistory()
                for at, event in events:
                    self.history.apply(event, at)
                if self.log.at_end:
                    return self.history


def read_history(path: Path | str) -> RunHistory:
    """The history of a whole ``events.jsonl`` (an empty one without the file)."""
    return HistoryFile(path).update()
