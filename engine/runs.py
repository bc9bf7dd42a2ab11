"""The run directory as the run's identity: who owns it, whether it is alive, how to steer it.

A run is a process (``transformer-train``, in the foreground or started detached by the app).
While it lives it holds, in its run directory:

    run.lock      flock()ed by the run process; JSON {pid, host, started_at, processes, argv}.
                  Removed at exit. A process that died (kill -9, a crash) releases the flock
                  with it, so the next run takes a stale lock over.
    heartbeat     rewritten atomically every HEARTBEAT_SECONDS by the run process's main thread:
                  {pid, at, stage, step, paused, control_seq}; ``control_seq`` acknowledges the
                  last control request applied.
    control.json  the control channel: {seq, command, at}, written atomically by a client
                  (``send_control``), polled by the run process every POLL_SECONDS.
    run.log       stdout and stderr of a run started with ``launch_detached``.

Why a request file and not a Unix socket: a file works on the shared network filesystems that
multi-node torchrun jobs use for their run directory (a socket only reaches the node it was
bound on), needs no server thread and no protocol, and a request survives a client that exits
at once (``transformer-train pause DIR`` in a script). The price is up to POLL_SECONDS of
latency, small next to a training batch.

Clients never take the flock (a client holding it for a moment could make a run that starts at
that moment refuse); they judge liveness from the lock's pid on this host (psutil: the pid exists,
is no zombie, and was created before the lock) and from the heartbeat's age on another host.

No Textual and no torch here: the app and the headless commands import this module.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from engine import atomic
from engine.errors import EngineError
from engine.history import HistoryFile, RunHistory, RunState

LOCK, HEARTBEAT, CONTROL, LOG, EVENTS = "run.lock", "heartbeat", "control.json", "run.log", "events.jsonl"
PREVIOUS = "previous"  # DIR/previous/<UTC time>/ holds runs moved aside (engine/previous.py)
HEARTBEAT_SECONDS = 2.0
POLL_SECONDS = 0.2
DEAD_AFTER_SECONDS = 30.0  # a heartbeat this old from another host: the run is gone
STALL_FACTOR = 10  # no batch for this many median batch times: stalled
STALL_MIN_SECONDS = 30.0  # ...and never less than this (progress events come at most 4 a second)
COMMANDS = ("pause", "resume", "stop")
RESULT_SUFFIX = ".pt"  # checkpoints: what a run leaves (engine/previous.py, the run list)


LIVE_STATES = (RunState.RUNNING, RunState.PAUSED, RunState.STALLED)


@dataclass(frozen=True)
class RunSummary:
    run_dir: Path
    name: str
    preset: str
    state: RunState
    epoch: int
    epochs: int
    step: int
    val_loss: float | None
    bleu: float | None
    last_event_at: float | None
    pid: int | None
    host: str | None
    processes: int
    last_checkpoint: str | None
    stage: str = ""  # the stage running (or last run)
    message: str = ""  # why it failed, when it did
    last_alert: str = ""  # the text of the last Alert the run raised (engine/alerts.py)

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES


# --- the lock (run process side) -----------------------------------------------------------


class RunDirBusy(EngineError):
    """Another live run process owns the directory."""


class RunLock:
    """The run process's claim on its run directory; ``release()`` (or exit) gives it up."""

    def __init__(self, run_dir: Path, fd: int, info: dict[str, Any]) -> None:
        self.run_dir, self.fd, self.info = run_dir, fd, info

    @classmethod
    def acquire(cls, run_dir: Path | str, processes: int = 1,
                argv: list[str] | None = None) -> "RunLock":
        """Take the lock or raise RunDirBusy naming the live pid. Creates ``run_dir``."""
        import fcntl

        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK
        for _ in range(20):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                flocked = True
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise RunDirBusy(busy_message(run_dir, read_lock(run_dir))) from None
                flocked = False  # a filesystem without flock: the pid and heartbeat decide
            try:
                same_file = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same_file = False
            if not same_file:  # the owner removed it between our open and flock: try again
                os.close(fd)
                continue
            holder = read_lock(run_dir)
            if holder and holder.get("pid") != os.getpid() and _holder_alive(run_dir, holder,
                                                                               flocked):
                os.close(fd)
                raise RunDirBusy(busy_message(run_dir, holder))
            info = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": time.time(),
                    "processes": int(processes), "argv": list(argv or sys.argv)}
            # a control request left by an earlier run must not steer this one
            (run_dir / CONTROL).unlink(missing_ok=True)
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(info).encode(), 0)
                os.fsync(fd)
            except OSError:  # a full disk: leave the directory as it was
                path.unlink(missing_ok=True)
                os.close(fd)
                raise
            return cls(run_dir, fd, info)
        raise RunDirBusy(f"{run_dir}: could not take {LOCK} (it keeps being replaced)")

    def release(self) -> None:
        """Remove the lock file, then let go of the flock (in that order: a waiting run then
        finds no file of ours)."""
        if self.fd < 0:
            return
        (self.run_dir / LOCK).unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = -1


def _holder_alive(run_dir: Path, holder: dict[str, Any], flocked: bool) -> bool:
    """Whether the process a lock names still runs, though we could take the flock (it died,
    or flock does not reach across the hosts of a network filesystem)."""
    if holder.get("host") == socket.gethostname():
        return not flocked and pid_alive(holder.get("pid"), holder.get("started_at"))
    return heartbeat_age(run_dir, holder) < DEAD_AFTER_SECONDS


def heartbeat_age(run_dir: Path, holder: dict[str, Any]) -> float:
    """Seconds since the lock holder's last heartbeat (since it took the lock, before its first
    one: a heartbeat left by an earlier process does not count)."""
    beat = read_heartbeat(run_dir)
    try:
        if beat is not None and beat.get("pid") == holder.get("pid"):
            return time.time() - float(beat["at"])
        return time.time() - float(holder.get("started_at", 0))
    except (KeyError, TypeError, ValueError):
        return float("inf")


def busy_message(run_dir: Path, holder: dict[str, Any] | None) -> str:
    holder = holder or {}
    started = holder.get("started_at")
    since = f", started {_utc(started)}" if started else ""
    return (f"{run_dir} is in use by a live run (pid {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')}{since}): one run per directory; steer it with "
            f"transformer-train pause|resume|stop {run_dir}, or choose another --run-dir")


# --- reading the run directory -------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any] | None:
    """A small JSON file written atomically, or in place (the lock): retry a torn read."""
    for attempt in range(3):
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
            return value if isinstance(value, dict) else None
        except FileNotFoundError:
            return None
        except (ValueError, OSError):
            time.sleep(0.02 * (attempt + 1))
    return None


def read_lock(run_dir: Path | str) -> dict[str, Any] | None:
    return _read_json(Path(run_dir) / LOCK)


def read_heartbeat(run_dir: Path | str) -> dict[str, Any] | None:
    return _read_json(Path(run_dir) / HEARTBEAT)


def pid_alive(pid: Any, started_at: Any = None) -> bool:
    """A process with this pid exists on this host, is not a zombie, and (given the lock's
    start time) is not a later process that reused the pid."""
    import psutil

    try:
        process = psutil.Process(int(pid))
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return started_at is None or process.create_time() <= float(started_at) + 1.0
    except (psutil.Error, TypeError, ValueError):
        return False


def live_owner(run_dir: Path | str) -> dict[str, Any] | None:
    """The lock's JSON when a live process owns ``run_dir``, else None."""
    run_dir = Path(run_dir)
    holder = read_lock(run_dir)
    if not holder:
        return None
    if holder.get("host") == socket.gethostname():
        return holder if pid_alive(holder.get("pid"), holder.get("started_at")) else None
    return holder if heartbeat_age(run_dir, holder) < DEAD_AFTER_SECONDS else None


_histories: dict[Path, HistoryFile] = {}  # run_dir -> its events.jsonl, folded so far


def run_history(run_dir: Path | str) -> RunHistory:
    """What ``run_dir``'s events.jsonl says (engine/history.py), read to its present end: only
    what was appended since the last call is read. The object is shared (a cache): read it,
    never change it."""
    run_dir = Path(run_dir)
    key = run_dir.resolve()
    if key not in _histories:
        _histories[key] = HistoryFile(run_dir / EVENTS)
    return _histories[key].update()


def forget_history(run_dir: Path | str) -> None:
    """Drop ``run_dir``'s cached history (its run was moved away: engine/previous.py)."""
    _histories.pop(Path(run_dir).resolve(), None)


def _stalled(history: RunHistory, now: float) -> bool:
    """No batch for STALL_FACTOR median batch times (not while paused, validating or saving)."""
    if history.paused or history.last_batch_at is None or history.epoch_end \
            or not history.batch_seconds:
        return False
    limit = max(STALL_FACTOR * statistics.median(history.batch_seconds), STALL_MIN_SECONDS)
    return now - history.last_batch_at > limit


def _run_name(run_dir: Path) -> str:
    if run_dir.parent.name == PREVIOUS:  # a run moved aside: say whose
        return f"{run_dir.parent.parent.name}/{PREVIOUS}/{run_dir.name}"
    return run_dir.name


def summarize(run_dir: Path | str, own_lock: bool = True,
              history: RunHistory | None = None) -> RunSummary:
    """The run in ``run_dir`` now, from its lock, heartbeat and events.jsonl.

    ``own_lock=False``: this process's own lock is not the run's (a new run asking what its
    directory held before it). ``history``: its events.jsonl already folded by the caller (the
    comparison follows its own), else run_history's."""
    run_dir = Path(run_dir)
    history = run_history(run_dir) if history is None else history
    holder = read_lock(run_dir)
    if not own_lock and holder and holder.get("pid") == os.getpid():
        holder = None
    owner = live_owner(run_dir) if holder else None
    now = time.time()
    ended = history.ended
    if owner is not None and ended and history.ended_at is not None and \
            float(owner.get("started_at", 0)) > history.ended_at:
        ended = False  # a new run process started after that end; its RunStarted is coming
    if owner is not None and not ended:
        beat = read_heartbeat(run_dir) or {}
        if beat.get("pid") != owner.get("pid"):
            beat = {}  # an earlier process's heartbeat
        beat_age = heartbeat_age(run_dir, owner)
        if history.paused or beat.get("paused"):
            state = RunState.PAUSED
        elif _stalled(history, now) or beat_age > DEAD_AFTER_SECONDS:
            state = RunState.STALLED  # alive, but no batch (or no heartbeat) for far too long
        else:
            state = RunState.RUNNING
    elif ended:
        state = history.state  # finished, stopped or failed
    elif history.events or holder:
        state = RunState.DEAD  # the process is gone without an end event
    else:
        state = RunState.NEW
    processes = int(owner.get("processes", 1)) if owner else history.processes
    return RunSummary(
        run_dir=run_dir, name=_run_name(run_dir), preset=history.preset, state=state,
        epoch=history.epoch, epochs=history.epochs, step=history.step,
        val_loss=history.val_loss, bleu=history.bleu, last_event_at=history.last_event_at,
        pid=int(holder["pid"]) if holder and "pid" in holder else None,
        host=holder.get("host") if holder else None, processes=processes,
        last_checkpoint=history.last_checkpoint or _newest_checkpoint(run_dir),
        stage=history.stage, message=history.message,
        last_alert=history.last_alert.text if history.last_alert else "")


def _newest_checkpoint(run_dir: Path) -> str | None:
    try:
        found = [p for p in run_dir.iterdir() if p.suffix == RESULT_SUFFIX and p.is_file()]
    except OSError:
        return None
    return str(max(found, key=lambda p: p.stat().st_mtime)) if found else None


def is_run_dir(path: Path) -> bool:
    return (path / EVENTS).is_file() or (path / LOCK).is_file()


def list_runs(root: Path | str) -> list[RunSummary]:
    """Every run directory under ``root`` (its children and the runs they moved aside), the
    most recently active first."""
    root = Path(root)
    found: list[Path] = []
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir())
    except OSError:
        return []
    for child in children:
        if is_run_dir(child):
            found.append(child)
        previous = child / PREVIOUS
        if previous.is_dir():
            found.extend(sorted(p for p in previous.iterdir() if p.is_dir() and is_run_dir(p)))
    summaries = [summarize(p) for p in found]
    return sorted(summaries, key=lambda s: -(s.last_event_at or 0.0))


# --- the run process's side of heartbeat and control ----------------------------------------


def write_heartbeat(run_dir: Path | str, **fields: Any) -> None:
    """{pid, at, **fields} (stage, step, paused, control_seq), atomically."""
    beat = {"pid": os.getpid(), "at": time.time(), **fields}
    atomic.write_text(Path(run_dir) / HEARTBEAT, json.dumps(beat))


def read_control(run_dir: Path | str) -> dict[str, Any] | None:
    """The pending control request {seq, command, at}, or None (none, or not one we know)."""
    request = _read_json(Path(run_dir) / CONTROL)
    try:
        if request and request["command"] in COMMANDS:
            return {**request, "seq": int(request["seq"])}
    except (KeyError, TypeError, ValueError):
        pass
    return None


def record_abort(run_dir: Path | str, message: str) -> None:
    """A RunFailed line for a run process that ends at once (no engine left to write it)."""
    from engine.events import RunFailed, to_line

    line = to_line(RunFailed(stage="", message=message), time.time())
    try:
        fd = os.open(Path(run_dir) / EVENTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError:
        pass


# --- steering (client side) ----------------------------------------------------------------


def send_control(run_dir: Path | str, command: str) -> int:
    """Ask the live run in ``run_dir`` to pause, resume or stop; returns the request's seq
    (the heartbeat's ``control_seq`` reaches it once the run process applied it)."""
    run_dir = Path(run_dir)
    if command not in COMMANDS:
        raise EngineError(f"{command!r}: unknown command (commands: {', '.join(COMMANDS)})")
    if live_owner(run_dir) is None:
        raise EngineError(no_live_run(run_dir))
    previous = _read_json(run_dir / CONTROL) or {}
    beat = read_heartbeat(run_dir) or {}
    seq = max(int(previous.get("seq", 0)), int(beat.get("control_seq", 0))) + 1
    atomic.write_text(run_dir / CONTROL, json.dumps(
        {"seq": seq, "command": command, "at": time.time()}))
    return seq


def wait_applied(run_dir: Path | str, seq: int, timeout: float = 5.0) -> dict[str, Any] | None:
    """The heartbeat once the run process has applied request ``seq``; None after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        beat = read_heartbeat(run_dir)
        if beat and int(beat.get("control_seq", 0)) >= seq:
            return beat
        if time.monotonic() >= deadline or live_owner(run_dir) is None:
            return None
        time.sleep(POLL_SECONDS / 2)


def no_live_run(run_dir: Path) -> str:
    summary = summarize(run_dir)
    if summary.state == RunState.NEW:
        why = "no run there"
    elif summary.state == RunState.DEAD:
        why = "its process is gone without an end event (dead); resume with --resume last"
    else:
        why = f"the run there is {summary.state.value}"
    return f"no live run in {run_dir} ({why})"


def launch_detached(argv: list[str], run_dir: Path | str) -> int:
    """Start ``python -m engine <argv>`` as a run process that outlives this one and its
    terminal: its own session (no controlling terminal, so no SIGHUP when the terminal goes),
    stdin from /dev/null, stdout and stderr to ``run_dir/run.log``. Returns its pid; the run
    process takes the lock itself (and refuses, in run.log, when the directory is in use)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(run_dir / LOG, "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "engine", *argv], stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True, close_fds=True)
    return process.pid


# --- one line per run ----------------------------------------------------------------------


def _utc(at: float) -> str:
    return datetime.fromtimestamp(float(at), timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(at: float | None) -> str:
    if at is None:
        return "never"
    seconds = max(time.time() - at, 0.0)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h ago"
    return f"{seconds / 86400:.0f}d ago"


def describe(summary: RunSummary) -> str:
    """One line for ``transformer-train status``."""
    s = summary
    parts = [str(s.run_dir), s.state.value]
    if s.live and s.pid is not None:
        parts.append(f"pid {s.pid} on {s.host}")
    if s.processes > 1:
        parts.append(f"{s.processes} processes")
    if s.preset:
        parts.append(f"preset {s.preset}")
    if s.epochs:
        parts.append(f"epoch {s.epoch}/{s.epochs} step {s.step}")
    elif s.stage:
        parts.append(f"stage {s.stage}")
    if s.val_loss is not None:
        parts.append(f"val loss {s.val_loss:.3f}")
    if s.bleu is not None:
        parts.append(f"BLEU {s.bleu:.2f}")
    parts.append(f"last event {_ago(s.last_event_at)}")
    if s.state == RunState.DEAD and s.last_checkpoint:
        parts.append(f"resume from {Path(s.last_checkpoint).name} with --resume last")
    if s.state == RunState.FAILED and s.message:
        parts.append(s.message[:160])
    return "  ".join(parts)
