"""`transformer-train`: the engine without the app, printing the seed's progress lines.

    transformer-train [--preset NAME|PATH] [--set section.key=value ...] [--run-dir DIR]
                      [--until STAGE] [--resume last|PATH]
                      [--fresh]
    transformer-train translate|evaluate|average|export|tensorboard|fit ... (see `... COMMAND --help`)
    transformer-train status [DIR ...]                 one line per run (default: under saved/)
    transformer-train compare DIR... [--json]          runs side by side (a table)
    transformer-train pause|resume|stop DIR            steer the live run in DIR

The training command is the run process (engine/runs.py): it locks its run directory (a second
run there refuses), writes a heartbeat, and obeys the control channel; the pipeline runs in an
engine thread while the main thread does that and handles SIGTERM/SIGINT/SIGHUP (stop with a
checkpoint; a second Ctrl-C aborts). The app starts the same process detached.

Under torchrun (WORLD_SIZE > 1 in the environment) every process joins one distributed job:
    torchrun --nproc_per_node=N -m engine --preset NAME ...   (see engine/distributed.py)

Exit status of a training run: 0 finished or stopped on request, 1 the run failed, 2 bad input
or a run directory in use / holding an earlier run. Of pause/resume/stop: 0 done, 1 no live run
there. Of status DIR: the state of the run (STATUS_HELP below).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from engine import atomic, previous, runs
from engine.alerts import Alerts
from engine.config import PRESET_NAMES, describe_keys, load_config
from engine.control import RunControl
from engine.errors import EngineError
from engine.events import fan_out
from engine.paths import RUNS_ROOT, default_run_dir
from engine.stages import STAGES, stage_names
from engine.versions import versions_text

TRAIN_EXIT_HELP = ("Exit status: 0 finished, or stopped on request (checkpoint_last.pt saved); 1 the "
                   "run failed; 2 bad input, or the run directory is in use or holds an earlier "
                   "run. `transformer-train status DIR` tells a run's state by its exit status.")
# `transformer-train status DIR`: the exit status says the run's state, so scripts need not parse
STATUS_EXIT = {runs.RunState.FINISHED: 0,
               runs.RunState.RUNNING: 3, runs.RunState.PAUSED: 3, runs.RunState.STALLED: 3,
               runs.RunState.STOPPED: 4,
               runs.RunState.FAILED: 5, runs.RunState.DEAD: 5}
NOT_A_RUN = 2
STATUS_HELP = ("Exit status: 0 finished; 2 no run in DIR (bad input); 3 live: running, paused or "
               "stalled; 4 stopped (continue it with --resume last); 5 failed, or dead (its "
               "process gone without an end). With several DIRs: 2 if one holds no run, else "
               "the highest of theirs. Without DIR: 0.")

COMMANDS = {  # subcommand -> "module:function(argv) -> exit status"
    "translate": "engine.commands:translate_main",
    "evaluate": "engine.commands:evaluate_main",
    "average": "engine.commands:average_main",
    "export": "engine.export:export_main",
    "tensorboard": "engine.tensorboard:tensorboard_main",
    "status": "engine.cli:status_main",
    "pause": "engine.cli:pause_main",
    "resume": "engine.cli:resume_main",
    "stop": "engine.cli:stop_main",
    "fit": "engine.fit:fit_main",
    "compare": "engine.compare:compare_main",
}


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transformer-train",
        description="Train a translation Transformer headless, printing progress lines.",
        epilog=TRAIN_EXIT_HELP + "\n\nConfig keys (--set section.key=value):\n" + describe_keys(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="sample",
                        help=f"{', '.join(PRESET_NAMES)}, or the path of a .toml file (default: sample)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set training.epochs=3 (repeatable)")
    parser.add_argument("--run-dir", type=Path, help="where outputs go (default: saved/<preset>)")
    parser.add_argument("--until", metavar="STAGE",
                        help=f"stop after this stage: {', '.join(STAGES)}")
    parser.add_argument("--resume", metavar="last|PATH",
                        help="continue training from a checkpoint (last = the run dir's checkpoint_last.pt)")
    parser.add_argument("--fresh", action="store_true",
                        help="the run dir holds an earlier run: move it to DIR/previous/<UTC time>/ "
                             "and start anew (without it, such a start is refused)")
    return parser


class StopSignals:
    """SIGTERM (a scheduler, `kill`), SIGINT (Ctrl-C) and SIGHUP (a closed terminal or dropped
    SSH session) stop the run at the next update boundary: checkpoint_last.pt is saved and
    RunFinished(stopped) written. A second Ctrl-C while stopping aborts at once.

    The handler only records the signal; the main thread's loop acts on it. Nothing here writes
    to the terminal: after SIGHUP it is gone, and a write would fail with EIO.
    """

    def __init__(self, abort: Callable[[], None]) -> None:
        self.received: list[int] = []
        self.abort = abort
        # a SIGHUP or SIGINT this process was started ignoring stays ignored: `nohup` and a
        # shell's background job ask for a run that outlives the terminal
        self.names = [name for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name)
                      and signal.getsignal(getattr(signal, name)) is not signal.SIG_IGN]
        for name in self.names:
            signal.signal(getattr(signal, name), self.on_signal)

    def on_signal(self, signum: int, frame: object) -> None:
        if signum == signal.SIGINT and signal.SIGINT in self.received:
            self.abort()  # does not return
        self.received.append(signum)


class TerminalSafe:
    """The printer, until the terminal goes away (EIO after a hang-up, EPIPE from a closed pipe):
    from then on the run goes on without it, and what anything still writes to stdout or stderr
    (a library's warning, the interpreter flushing at exit) goes to ``log`` instead of failing."""

    def __init__(self, printer: Callable, log: Path) -> None:
        self.printer, self.log = printer, log
        self.broken = False

    def __call__(self, event) -> None:
        if self.broken:
            return
        try:
            self.printer(event)
        except OSError:
            self.broken = True
            _redirect_output(self.log)


class HeartbeatFields:
    """What the heartbeat reports (the stage, the update), picked from the events as they pass."""

    def __init__(self) -> None:
        self.stage, self.step = "", 0

    def __call__(self, event) -> None:
        from engine.events import BatchProgress, EpochSummary, StageStarted

        if isinstance(event, StageStarted):
            self.stage = event.stage
        elif isinstance(event, (BatchProgress, EpochSummary)):
            self.step = event.step


def claim_run_dir(run_dir: Path, args: argparse.Namespace, processes: int,
                  argv: list[str]) -> tuple[runs.RunLock, Path | None]:
    """Rank 0's lock on the run directory, after the checks that keep one run per directory and
    never overwrite an earlier run; (lock, where --fresh moved the earlier run or None)."""
    lock = runs.RunLock.acquire(run_dir, processes, argv)  # RunDirBusy names the live pid
    try:
        # resuming this directory's own run continues it; a checkpoint from elsewhere would
        # start another run here
        continues = args.resume == "last" or (
            args.resume and Path(args.resume).expanduser().resolve().parent == run_dir.resolve())
        earlier = None if continues else previous.earlier_run(run_dir)
        if earlier is None:
            return lock, None
        if not args.fresh:
            where = (f"epoch {earlier.epoch}/{earlier.epochs}, step {earlier.step}"
                     if earlier.epochs else "its checkpoints")
            raise EngineError(
                f"{run_dir} holds an earlier run ({earlier.state.value}, {where}): continue it "
                "with --resume last, or start anew with --fresh (moves it to "
                f"{run_dir / runs.PREVIOUS}/<UTC time>/)")
        return lock, previous.move_aside(run_dir, keep=(runs.LOCK,))
    except BaseException:
        lock.release()
        raise


def steer(run_dir: Path, control: RunControl, engine: threading.Thread, signals: StopSignals,
          fields: HeartbeatFields, owner: bool, alerts: Alerts | None = None) -> None:
    """The run process's main thread while the engine thread runs: signals; on rank 0 (the
    ``owner`` of the run directory) also the control channel, the heartbeat and the stall
    watchdog (``alerts``: no progress for notify.stall_minutes while not paused)."""
    from engine import distributed

    applied = 0  # seq of the last control request applied
    next_beat = 0.0
    handled = 0  # signals acted on so far
    while engine.is_alive():
        if len(signals.received) > handled:  # acted on here, not in the handler
            handled = len(signals.received)
            control.stop()
            distributed.stop_signalled()
        changed = False
        if owner:
            request = runs.read_control(run_dir)
            if request is not None and request["seq"] > applied:
                applied = request["seq"]
                changed = True
                {"pause": control.pause, "resume": control.resume, "stop": control.stop}[
                    request["command"]]()
            if changed or time.monotonic() >= next_beat:
                next_beat = time.monotonic() + runs.HEARTBEAT_SECONDS
                try:
                    runs.write_heartbeat(run_dir, stage=fields.stage, step=fields.step,
                                         paused=control.paused, control_seq=applied)
                except OSError:
                    pass  # a full disk must not end the run from here; the engine reports it
            if alerts is not None:
                alerts.check_stall(control.paused)
        engine.join(runs.POLL_SECONDS)


def run_train(argv: list[str]) -> int:
    from engine import distributed
    from engine.inputs import check_run_inputs
    from engine.pipeline import run
    from engine.printer import HeadlessPrinter

    args = train_parser().parse_args(argv)
    try:
        if args.fresh and args.resume:
            raise EngineError("--fresh and --resume exclude each other: --resume last continues "
                              "the run in the directory, --fresh moves it aside and starts anew")
        config = load_config(args.preset, args.overrides)
        stage_names(args.until)  # validates --until before any work
        check_run_inputs(config, args.run_dir or default_run_dir(config.name), args.resume)
        if config.training.device == "cuda":  # only then is torch worth importing here
            from engine.device import pick_device

            pick_device("cuda")
        if config.log.tensorboard:
            from engine.tensorboard import require_tensorboard

            require_tensorboard()  # a missing optional package is bad input, found before work
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run_dir = args.run_dir or default_run_dir(config.name)
    control = RunControl()
    lock: runs.RunLock | None = None

    def abort() -> None:  # a second Ctrl-C: no checkpoint, but the run's history says why
        if lock is not None and distributed.is_main():
            runs.record_abort(run_dir, "aborted by a second Ctrl-C while stopping; "
                              "the last saved checkpoint stays loadable")
            lock.release()
        os._exit(130)

    signals = StopSignals(abort)
    try:
        distributed.init_from_env(config.training.device)  # a no-op without torchrun
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    refusal, refusal_status = "", 2
    if distributed.is_main():
        try:
            lock, moved = claim_run_dir(run_dir, args, distributed.world_size(), sys.argv)
            if moved is not None:
                print(f"moved the earlier run in {run_dir} to {moved}", file=sys.stderr)
        except (EngineError, OSError) as exc:  # busy, an earlier run, an unwritable dir
            refusal = str(exc)
            refused = atomic.storage_error(exc)
            if refused is not None:  # a full disk is no bad input: exit 1, as for a later write
                refusal, refusal_status = atomic.storage_message(
                    refused, run_dir / runs.LOCK, f"writing {runs.LOCK}"), 1
    # every rank learns rank 0's answer (a refused job must not leave ranks waiting for it)
    if distributed.from_main(lambda: 1.0 if refusal else 0.0):
        if refusal:
            print(f"error: {refusal}", file=sys.stderr)
        distributed.teardown()
        return refusal_status
    # rank 0 prints the progress; the other ranks only their own failure
    printer = TerminalSafe(HeadlessPrinter() if distributed.is_main()
                           else distributed.failures_only(HeadlessPrinter(sys.stderr)),
                           run_dir / runs.LOG)
    fields = HeartbeatFields()
    emit = fan_out(fields, printer)
    outcome = {"status": "failed"}
    alerts = Alerts(config.notify, run_dir) if lock is not None else None

    def engine_thread() -> None:
        try:
            outcome["status"] = run(config, run_dir, emit, control, until=args.until,
                                    resume=args.resume, alerts=alerts)
        except EngineError as exc:  # events.jsonl could not take the run's last event (disk full)
            print(f"error: {exc}", file=sys.stderr)

    engine = threading.Thread(target=engine_thread, name="engine", daemon=True)
    try:
        engine.start()
        steer(run_dir, control, engine, signals, fields, owner=lock is not None, alerts=alerts)
        engine.join()
    finally:
        if lock is not None:
            lock.release()
        distributed.teardown(failed=outcome["status"] == "failed")
    return {"finished": 0, "stopped": 0}.get(outcome["status"], 1)


def _redirect_output(path: Path) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:
        fd = os.open(os.devnull, os.O_WRONLY)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


# --- status, pause, resume, stop -------------------------------------------------------------


def status_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="transformer-train status",
        description="One line per run: state (running, paused, stalled, finished, stopped, "
                    "failed, dead), pid and host, processes, epoch/step, last losses, and the "
                    "versions it ran with (torch, CUDA, cuDNN, NCCL, driver, device).",
        epilog=STATUS_HELP)
    parser.add_argument("run_dirs", nargs="*", type=Path, metavar="DIR",
                        help="run directories (default: every run under saved/)")
    args = parser.parse_args(argv)
    if not args.run_dirs:
        summaries = runs.list_runs(RUNS_ROOT)
        for summary in summaries:
            print(status_line(summary))
        if not summaries:
            print("no runs under saved/")
        return 0
    codes = []
    for run_dir in args.run_dirs:
        summary = runs.summarize(run_dir) if runs.is_run_dir(run_dir) else None
        if summary is None or summary.state == runs.RunState.NEW:
            why = "no such directory" if not run_dir.exists() else (
                f"no run there (a run directory holds {runs.EVENTS} or {runs.LOCK})")
            print(f"error: {run_dir}: {why}", file=sys.stderr)
            codes.append(NOT_A_RUN)
            continue
        print(status_line(summary))
        codes.append(STATUS_EXIT[summary.state])
    return NOT_A_RUN if NOT_A_RUN in codes else max(codes)


def status_line(summary: runs.RunSummary) -> str:
    """runs.describe's line, and the versions the run's last start recorded."""
    versions = started_versions(summary.run_dir)
    return runs.describe(summary) + (f"  {versions_text(versions)}" if versions else "")


def started_versions(run_dir: Path) -> dict:
    """The versions of the last RunStarted in the run's events.jsonl ({} before they were
    recorded). Only the lines naming RunStarted are parsed: the file may hold millions."""
    from engine.events import RunStarted, from_json

    versions: dict = {}
    try:
        with open(run_dir / runs.EVENTS, encoding="utf-8", errors="replace") as f:
            for line in f:
                if '"RunStarted"' in line and line.endswith("\n"):
                    try:
                        event = from_json(line)
                    except (ValueError, TypeError, KeyError):
                        continue
                    if isinstance(event, RunStarted):
                        versions = event.versions
    except OSError:
        pass
    return versions


def control_main(command: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"transformer-train {command}",
        description=f"Ask the live run in DIR to {command} (at its next update boundary).")
    parser.add_argument("run_dir", type=Path, metavar="DIR")
    args = parser.parse_args(argv)
    owner = runs.read_lock(args.run_dir) or {}
    try:
        seq = runs.send_control(args.run_dir, command)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    beat = runs.wait_applied(args.run_dir, seq)
    who = f"pid {owner.get('pid', '?')}"
    if beat is None:
        print(f"{args.run_dir}: {command} requested ({who} has not acknowledged it yet)")
        return 0
    done = {"pause": "paused", "resume": "resumed",
            "stop": "stopping at the next update boundary (checkpoint_last.pt is saved)"}[command]
    print(f"{args.run_dir}: {done} ({who}, stage {beat.get('stage') or '-'}, "
          f"step {beat.get('step', 0)})")
    return 0


def pause_main(argv: list[str]) -> int:
    return control_main("pause", argv)


def resume_main(argv: list[str]) -> int:
    return control_main("resume", argv)


def stop_main(argv: list[str]) -> int:
    return control_main("stop", argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        import importlib

        module, _, function = COMMANDS[argv[0]].partition(":")
        try:
            return getattr(importlib.import_module(module), function)(argv[1:])
        except EngineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return run_train(argv)


if __name__ == "__main__":
    sys.exit(main())
