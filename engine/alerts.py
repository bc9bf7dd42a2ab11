"""Alerts: the run process tells a person away from it that the run needs them.

``Alerts`` is one more consumer of the run's events (engine/pipeline.py hooks it in on rank 0):
it raises an ``Alert`` event when the run finished, failed, stopped, diverged (the divergence
guard's message), skipped ``notify.oom_skips`` batches for out of memory, or reached
``notify.target_bleu`` / ``notify.target_val_loss``; the run process's main thread
(engine/cli.py) asks it every poll whether the run has stalled (``check_stall``). Every Alert
goes to events.jsonl like any event, and to the ``[notify] command`` through a ``Notifier``:
a background thread, so that a slow or failing command never slows or fails training.

The command runs as ``sh -c COMMAND`` in its own process group with the alert as one JSON
object on stdin (``payload``) and as environment variables (``environment``); a command that
exits non-zero or outlives ``notify.timeout_seconds`` (its process group is killed) becomes
one warning Notice. No app needs to be open for any of this.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from engine.config import NotifyConfig
from engine.events import (
    Alert,
    BatchProgress,
    BatchSkipped,
    Emit,
    EpochSummary,
    Event,
    MemorySample,
    Notice,
    RunFailed,
    RunFinished,
    StageStarted,
    TestBleu,
)

FINAL_KINDS = ("finished", "failed", "stopped", "diverged")  # the run process ends after these
QUEUE_SIZE = 32  # alerts waiting for the command; more are dropped (with a Notice)
# the divergence guard's messages (engine/train/guard.py): a run stopped by it "diverged"
DIVERGED_MARKS = ("training stopped: diverged", "training stopped: loss or gradients were NaN")
QUIET = (MemorySample, Notice, Alert)  # events that are no sign of progress (a stall goes on)


def payload(alert: Alert, run_dir: Path, at: float) -> dict[str, object]:
    """What the command reads on stdin, as JSON (``text`` first: Slack's and Mattermost's
    incoming webhooks take this object as it is)."""
    return {"text": alert.text, "kind": alert.kind, "run_dir": str(run_dir),
            "run": run_dir.name, "host": socket.gethostname(), "pid": os.getpid(),
            "time": round(at, 3)}


def environment(fields: dict[str, object]) -> dict[str, str]:
    """The same fields as TT_ALERT_KIND, TT_ALERT_TEXT, TT_ALERT_TIME, TT_RUN_DIR, TT_RUN,
    TT_HOST, TT_PID (added to the run process's own environment)."""
    names = {"kind": "TT_ALERT_KIND", "text": "TT_ALERT_TEXT", "time": "TT_ALERT_TIME",
             "run_dir": "TT_RUN_DIR", "run": "TT_RUN", "host": "TT_HOST", "pid": "TT_PID"}
    return {**os.environ, **{names[key]: str(value) for key, value in fields.items()}}


class Notifier:
    """Runs the notify command for each alert, one at a time, in a background thread."""

    def __init__(self, command: str, timeout: float, run_dir: Path, warn: Callable[[str], None]
                 ) -> None:
        self.command, self.timeout, self.run_dir, self.warn = command, timeout, run_dir, warn
        self.queue: queue.Queue[tuple[Alert, float] | None] = queue.Queue(QUEUE_SIZE)
        self.delivered = 0
        self._process: subprocess.Popen | None = None  # the command now running
        self._given_up = False  # close() stopped waiting: what ends now is not reported
        self._thread = threading.Thread(target=self._deliver_all, name="notify", daemon=True)
        self._thread.start()

    def deliver(self, alert: Alert) -> None:
        """Queue the alert (never blocks); a full queue drops it, with a warning."""
        try:
            self.queue.put_nowait((alert, time.time()))
        except queue.Full:
            self.warn(f"notify.command: {QUEUE_SIZE} alerts waiting; {alert.kind} alert "
                      f"dropped: {alert.text}")

    def close(self, wait: float) -> None:
        """Deliver what is queued, waiting at most ``wait`` seconds, then stop (a command still
        running then is killed)."""
        deadline = time.monotonic() + wait
        while True:  # the end marker goes in once there is room
            try:
                self.queue.put(None, timeout=max(0.01, deadline - time.monotonic()))
                break
            except queue.Full:
                if time.monotonic() >= deadline:
                    break
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            left = 0
            while True:  # what is still queued is given up, so that the thread ends too
                try:
                    left += self.queue.get_nowait() is not None
                except queue.Empty:
                    break
            self.queue.put_nowait(None)
            self._given_up = True
            self._kill()
            self.warn(f"notify.command: still running {wait:g} s after the run ended; killed"
                      + (f", {left} alert(s) not delivered" if left else ""))

    def _deliver_all(self) -> None:
        while (item := self.queue.get()) is not None:
            try:
                self._run(*item)
            except Exception as exc:  # (e.g. no sh, too many processes) never into training
                self.warn(f"notify.command could not run for the {item[0].kind} alert: {exc}")

    def _run(self, alert: Alert, at: float) -> None:
        fields = payload(alert, self.run_dir, at)
        with tempfile.TemporaryFile() as output:  # a file, not a pipe: an orphan can't hang us
            self._process = subprocess.Popen(
                ["sh", "-c", self.command], stdin=subprocess.PIPE, stdout=output, stderr=output,
                env=environment(fields), start_new_session=True)  # its own process group
            try:
                self._process.communicate(json.dumps(fields).encode() + b"\n", self.timeout)
            except subprocess.TimeoutExpired:
                self._kill()
                self._process.wait()
                self.warn(f"notify.command timed out after {self.timeout:g} s (killed); the "
                          f"{alert.kind} alert was not delivered: {alert.text}")
                return
            finally:
                status = self._process.returncode
                self._process = None
            if self._given_up:
                return
            if status != 0:
                output.seek(0)
                lines = output.read().decode("utf-8", "replace").strip().splitlines()
                said = f": {lines[-1][:200]}" if lines else ""
                self.warn(f"notify.command exited with status {status} for the {alert.kind} "
                          f"alert{said}")
                return
            self.delivered += 1

    def _kill(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


class StallWatchdog:
    """A run that is not paused and has shown no progress for ``minutes`` has stalled: one alert
    per stall (progress again ends it). Paused time never counts."""

    def __init__(self, minutes: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds, self.clock = minutes * 60.0, clock
        self.last_progress = clock()
        self.alerted = False

    def saw(self, event: Event) -> None:
        if not isinstance(event, QUIET):
            self.last_progress = self.clock()
            self.alerted = False

    def check(self, paused: bool) -> float | None:
        """The seconds without progress when a new stall begins, else None."""
        now = self.clock()
        if paused:  # the time paused is no time without progress
            self.last_progress = now
            return None
        quiet = now - self.last_progress
        if not self.seconds or self.alerted or quiet < self.seconds:
            return None
        self.alerted = True
        return quiet


class Alerts:
    """The run's alerts: a consumer of its events (``see``) that emits ``Alert`` events through
    ``attach``'s emit and delivers every Alert to the notify command."""

    def __init__(self, notify: NotifyConfig, run_dir: Path,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config, self.run_dir = notify, Path(run_dir)
        self.watchdog = StallWatchdog(notify.stall_minutes, clock)
        self.emit: Emit | None = None
        self.notifier: Notifier | None = None
        self.closed = False
        self.stage, self.step = "", 0
        self.test_bleu: float | None = None
        self.oom_skips = 0
        self.next_oom_alert = notify.oom_skips
        self.targets_met: set[str] = set()
        self._lock = threading.Lock()  # an alert is raised from the engine or the main thread

    def attach(self, emit: Emit) -> None:
        """Start: alerts go out through ``emit`` (which also hands them back to ``see``)."""
        self.emit = emit
        if self.config.command:
            self.notifier = Notifier(self.config.command, self.config.timeout_seconds,
                                     self.run_dir, self._warn)

    def close(self) -> None:
        """The run has ended: its last alerts are delivered (up to notify.timeout_seconds)."""
        with self._lock:
            self.closed = True
        if self.notifier is not None:
            self.notifier.close(self.config.timeout_seconds + 1.0)
        self.emit = None  # events.jsonl closes next: a late warning of the notifier is dropped

    def raise_alert(self, kind: str, text: str) -> None:
        with self._lock:
            if self.closed or self.emit is None:
                return
            self.emit(Alert(kind=kind, text=text))

    def check_stall(self, paused: bool) -> None:
        """Called every poll by the run process's main thread."""
        quiet = self.watchdog.check(paused)
        if quiet is not None:
            where = f"stage {self.stage or '-'}" + (f", step {self.step:,}" if self.step else "")
            self.raise_alert("stalled", f"run {self.run_dir} stalled: no progress for "
                             f"{quiet / 60:.0f} min ({where})")

    def see(self, event: Event) -> None:
        self.watchdog.saw(event)
        name = f"run {self.run_dir}"
        if isinstance(event, Alert):
            if self.notifier is not None:
                self.notifier.deliver(event)
        elif isinstance(event, StageStarted):
            self.stage = event.stage
        elif isinstance(event, BatchProgress):
            self.step = event.step
        elif isinstance(event, TestBleu):
            self.test_bleu = event.sacrebleu
        elif isinstance(event, RunFinished):
            if event.status == "finished":
                said = (f"test BLEU {self.test_bleu:.1f}" if self.test_bleu is not None
                        else f"step {self.step:,}" if self.step else f"stage {self.stage}")
                self.raise_alert("finished", f"{name} finished: {said}")
            else:
                self.raise_alert("stopped", f"{name} stopped at "
                                 + (f"step {self.step:,}" if self.step else f"stage {self.stage}"))
        elif isinstance(event, RunFailed):
            kind = "diverged" if event.message.startswith(DIVERGED_MARKS) else "failed"
            self.raise_alert(kind, f"{name} {kind} in stage {event.stage or '-'}: "
                             + _one_line(event.message))
        elif isinstance(event, BatchSkipped) and event.reason == "oom":
            self.oom_skips += 1
            if self.next_oom_alert and self.oom_skips >= self.next_oom_alert:
                self.next_oom_alert *= 2
                self.raise_alert("oom", f"{name} skipped {self.oom_skips} batches for out of "
                                 f"memory (the last: epoch {event.epoch}, batch {event.batch}, "
                                 f"{event.tokens:,} tokens)")
        elif isinstance(event, EpochSummary):
            self._check_targets(event)

    def _check_targets(self, e: EpochSummary) -> None:
        bleu, loss = self.config.target_bleu, self.config.target_val_loss
        if bleu and e.bleu is not None and e.bleu >= bleu and "bleu" not in self.targets_met:
            self.targets_met.add("bleu")
            self.raise_alert("target", f"run {self.run_dir} reached validation BLEU "
                             f"{e.bleu:.2f} (target {bleu:g}) at step {e.step:,}")
        if loss and e.val_loss <= loss and "loss" not in self.targets_met:
            self.targets_met.add("loss")
            self.raise_alert("target", f"run {self.run_dir} reached validation loss "
                             f"{e.val_loss:.4f} (target {loss:g}) at step {e.step:,}")

    def _warn(self, text: str) -> None:
        emit = self.emit
        if emit is not None:  # (a Notice is no alert: it is not delivered again)
            emit(Notice(text=text, level="warning"))


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit - 1] + "…"
