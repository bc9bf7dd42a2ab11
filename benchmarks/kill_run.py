"""The kill test: `kill -9` a headless training run at random moments, resume it each time with
`--resume last`, and check that nothing was lost.

Half of the kills land the moment a new checkpoint temporary file appears, i.e. during a
checkpoint write; the others at a random moment of training (batches, validation, BLEU), and
every fifth at a random moment of start-up. After every
kill each *.pt of the run directory must load; when the run has finished, its epoch summaries
and final weights must equal those of an uninterrupted run of the same preset (run first, beside
it). Reports the training a kill lost: updates between the newest checkpoint_last.pt and the
last step the killed process reported (BatchProgress comes a few times a second, so this is a
lower bound, short by at most ~0.25 s of training).

    python benchmarks/kill_run.py [--preset sample] [--kills 24] [--save-every-minutes 0.02]
                                  [--set KEY=VALUE ...] [--seed 1] [--dir DIR]

Both runs use one thread (OMP_NUM_THREADS=1) so that their arithmetic is the same.
tests/test_kill.py runs a short version of this on a tiny config.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine import checkpoint as ckpt

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def engine_command(preset: str, run_dir: Path, sets: list[str], resume: bool) -> list[str]:
    command = [sys.executable, "-m", "engine", "--preset", preset, "--run-dir", str(run_dir)]
    for item in sets:
        command += ["--set", item]
    return command + (["--resume", "last"] if resume else [])


def events_of(run_dir: Path) -> list[dict]:
    """events.jsonl as dicts; a torn line (there must be none) fails json.loads."""
    lines = (run_dir / "events.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b"", "events.jsonl does not end with a whole line"
    return [json.loads(line) for line in lines[:-1] if line.strip()]


def summaries(events: list[dict]) -> dict[int, tuple]:
    """Epoch -> (train loss, val loss, bleu, step); the last summary of each epoch wins (a kill
    between an epoch's summary and its checkpoint repeats the epoch's end)."""
    return {e["epoch"]: (e["train_loss"], e["val_loss"], e["bleu"], e["step"])
            for e in events if e["event"] == "EpochSummary"}


def every_checkpoint_loads(run_dir: Path) -> int:
    paths = list(run_dir.glob("*.pt"))
    for path in paths:
        ckpt.load_checkpoint(path)  # raises on a half-written or damaged file
    return len(paths)


@dataclass
class Kill:
    moment: str  # "writing" (a checkpoint), "training" or "start-up"
    after_seconds: float
    last_step_seen: int  # the last step the killed process reported
    checkpoint_step: int  # the step checkpoint_last.pt holds after the kill
    checkpoints_loaded: int

    @property
    def updates_lost(self) -> int:
        return max(self.last_step_seen - self.checkpoint_step, 0)


@dataclass
class Report:
    kills: list[Kill] = field(default_factory=list)
    same_summaries: bool = False
    same_weights: bool = False
    epochs: int = 0
    seconds: float = 0.0


def temporaries(run_dir: Path) -> set[str]:
    return {p.name for p in run_dir.glob(f"{ckpt.TEMP_PREFIX}*")}


def wait_for_checkpoint_write(run_dir: Path, child: subprocess.Popen, limit: float) -> bool:
    """Poll (every millisecond) for a new checkpoint temporary file (a killed process's stale
    ones do not count): True when a checkpoint is being written."""
    stale = temporaries(run_dir)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and child.poll() is None:
        if temporaries(run_dir) - stale:
            return True
        time.sleep(0.001)
    return False


def runs_started(run_dir: Path) -> int:
    if not (run_dir / "events.jsonl").is_file():
        return 0
    return sum(e["event"] == "RunStarted" for e in events_of(run_dir))


def wait_for_training(run_dir: Path, child: subprocess.Popen, runs_before: int) -> None:
    """Until this process (the run after ``runs_before`` earlier ones) has started training."""
    while child.poll() is None:
        events = events_of(run_dir) if (run_dir / "events.jsonl").is_file() else []
        starts = [i for i, e in enumerate(events) if e["event"] == "RunStarted"]
        if len(starts) > runs_before and any(
                e["event"] == "StageStarted" and e["stage"] == "train"
                for e in events[starts[-1]:]):
            return
        time.sleep(0.02)


def straight(preset: str, run_dir: Path, sets: list[str]) -> None:
    done = subprocess.run(engine_command(preset, run_dir, sets, resume=False), env=ENV,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def killed(preset: str, run_dir: Path, sets: list[str], kills: int, rng: random.Random,
           max_delay: float, log=print) -> list[Kill]:
    """Run, kill -9, resume with --resume last, ``kills`` times; then let it finish."""
    report: list[Kill] = []
    started_once = False
    while True:
        resume = (run_dir / ckpt.LAST).is_file()
        command = engine_command(preset, run_dir, sets, resume=resume)
        runs_before = runs_started(run_dir)
        child = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
        started = time.monotonic()
        if len(report) >= kills:
            _, err = child.communicate()
            assert child.returncode == 0, err[-3000:]
            return report
        if not started_once:
            # the first kill waits for a first checkpoint, so that every restart resumes
            while not (run_dir / ckpt.LAST).is_file() and child.poll() is None:
                time.sleep(0.01)
            started_once = True
        # the moments, in turn: during a checkpoint write, at a random time of training, and
        # every fifth kill at a random time of start-up (data, tokenizer, encode, resume)
        moment = ("start-up" if len(report) % 5 == 4 else
                  "writing" if len(report) % 2 else "training")
        if moment == "writing":  # the first write after a random time of training
            wait_for_training(run_dir, child, runs_before)
            time.sleep(rng.uniform(0.0, max_delay))
            if not wait_for_checkpoint_write(run_dir, child, limit=max_delay * 4):
                moment = "no write came"
        elif moment == "training":
            wait_for_training(run_dir, child, runs_before)
            time.sleep(rng.uniform(0.0, max_delay))
        else:
            time.sleep(rng.uniform(0.0, 2.0))
        if child.poll() is not None:  # finished before the kill: the kills are all spent early
            _, err = child.communicate()
            assert child.returncode == 0, err[-3000:]
            log(f"run finished before kill {len(report) + 1}")
            return report
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        after = time.monotonic() - started
        loaded = every_checkpoint_loads(run_dir)
        events = events_of(run_dir)
        starts = [i for i, e in enumerate(events) if e["event"] == "RunStarted"]
        # the killed process's own steps (none when it died before its RunStarted)
        mine = events[starts[-1]:] if len(starts) > runs_before else []
        steps = [e["step"] for e in mine if e["event"] == "BatchProgress"]
        state = torch.load(run_dir / ckpt.LAST, weights_only=True, mmap=True)
        kill = Kill(moment, round(after, 2), max(steps, default=state["step"]), state["step"],
                    loaded)
        report.append(kill)
        log(f"kill {len(report):2d} ({kill.moment:8s} at {kill.after_seconds:5.2f} s): "
            f"checkpoint step {kill.checkpoint_step}, last step seen {kill.last_step_seen}, "
            f"lost >= {kill.updates_lost} updates; {loaded} checkpoints load")


def kill_test(preset: str, directory: Path, sets: list[str], kills: int, seed: int = 1,
              max_delay: float = 6.0, log=print, keep_straight: bool = False) -> Report:
    started = time.monotonic()
    rng = random.Random(seed)
    finished = directory / "straight" / "events.jsonl"
    if not (keep_straight and finished.is_file() and any(
            e["event"] == "RunFinished" for e in events_of(directory / "straight"))):
        straight(preset, directory / "straight", sets)
    report = Report(kills=killed(preset, directory / "killed", sets, kills, rng, max_delay, log))
    expected = summaries(events_of(directory / "straight"))
    got = summaries(events_of(directory / "killed"))
    report.epochs = len(expected)
    report.same_summaries = got == expected
    a = torch.load(directory / "straight" / ckpt.LAST, weights_only=True)
    b = torch.load(directory / "killed" / ckpt.LAST, weights_only=True)
    report.same_weights = a["model"].keys() == b["model"].keys() and all(
        torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    report.seconds = round(time.monotonic() - started, 1)
    if not report.same_summaries:
        log(f"summaries differ:\n  straight {expected}\n  killed   {got}")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="sample")
    parser.add_argument("--kills", type=int, default=24)
    parser.add_argument("--save-every-minutes", type=float, default=0.02)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-delay", type=float, default=8.0,
                        help="random kills come 0..this many seconds into training")
    parser.add_argument("--dir", type=Path, help="keep the two run directories here")
    parser.add_argument("--keep-straight", action="store_true",
                        help="reuse a finished DIR/straight run of the same settings")
    args = parser.parse_args()
    sets = [f"training.save_every_minutes={args.save_every_minutes}", *args.sets]
    directory = args.dir or Path(tempfile.mkdtemp(prefix="kill-run-"))
    report = kill_test(args.preset, directory, sets, args.kills, args.seed, args.max_delay,
                       keep_straight=args.keep_straight)
    lost = [k.updates_lost for k in report.kills]
    print(f"\n{len(report.kills)} kills over {report.epochs} epochs of {args.preset} "
          f"({report.seconds} s, in {directory})")
    print(f"during checkpoint writes: {sum(k.moment == 'writing' for k in report.kills)}")
    print(f"updates lost per kill (at least): max {max(lost, default=0)}, mean "
          f"{sum(lost) / max(len(lost), 1):.1f}")
    print(f"epoch summaries equal the uninterrupted run's: {report.same_summaries}; "
          f"final weights equal: {report.same_weights}")
    sys.exit(0 if report.same_summaries and report.same_weights else 1)


if __name__ == "__main__":
    main()
