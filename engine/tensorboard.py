"""Training metrics as TensorBoard scalars, live or after the fact.

Live: with ``--set log.tensorboard=true`` the runner adds a ``TensorBoardWriter`` beside the
JSONL writer; it is an event consumer like any other. After the fact:
``transformer-train tensorboard RUN_DIR`` replays the run's ``events.jsonl`` through the same
consumer, with each event's recorded wall time. Either way the event files go to
``RUN_DIR/tensorboard/``, so ``tensorboard --logdir saved/`` shows every run.

Scalars (x axis: optimizer updates):
    train/loss, train/avg_loss, train/lr, train/tokens_per_second     (BatchProgress)
    train/epoch_loss, valid/loss, valid/ppl, valid/bleu                (EpochSummary)
    memory/process_rss_mb, memory/torch_allocated_mb, memory/torch_peak_mb,
    memory/gpu<i>_used_mb                                              (MemorySample)
Losses are cross entropy without label smoothing, as everywhere in the engine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from engine.errors import EngineError
from engine.eventlog import EventLog, damaged_lines
from engine.events import (
    BatchProgress,
    EpochSummary,
    Event,
    MemorySample,
    RunFailed,
    RunFinished,
    TestBleu,
)
from engine.history import RunHistory

DIRECTORY = "tensorboard"
MB = 2**20


def require_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard writes through it)
    except ImportError:
        raise EngineError("log.tensorboard = true needs the tensorboard package "
                          "(pip install 'transformer-tui[tensorboard]')") from None


class TensorBoardWriter:
    """``emit`` consumer: scalars into ``run_dir/tensorboard``; closes at the run's end event."""

    def __init__(self, run_dir: Path, log_dir: Path | None = None) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir or Path(run_dir) / DIRECTORY), flush_secs=10)
        self.history = RunHistory()  # its step (updates so far) is the x of every scalar

    def __call__(self, event: Event, wall_time: float | None = None) -> None:
        self.history.apply(event, wall_time)
        step = self.history.step  # (memory samples carry no step of their own)

        def scalar(tag: str, value: float | None) -> None:
            if value is not None:
                self.writer.add_scalar(tag, value, step, walltime=wall_time)

        if isinstance(event, BatchProgress):
            scalar("train/loss", event.loss)
            scalar("train/avg_loss", event.avg_loss)
            scalar("train/lr", event.lr)
            scalar("train/tokens_per_second", event.tokens_per_second)
        elif isinstance(event, EpochSummary):
            scalar("train/epoch_loss", event.train_loss)
            scalar("valid/loss", event.val_loss)
            scalar("valid/ppl", event.val_ppl)
            scalar("valid/bleu", event.bleu)
        elif isinstance(event, TestBleu):  # once, at the end: the run's headline numbers
            scalar("test/sacrebleu", event.sacrebleu)
            scalar("test/paper_bleu", event.paper_bleu)
            self.writer.add_text("test/signatures", f"{event.checkpoint}: sacreBLEU "
                                 f"{event.sacrebleu_signature}; paper {event.paper_signature}",
                                 step, walltime=wall_time)
        elif isinstance(event, MemorySample):
            scalar("memory/process_rss_mb", event.process_rss / MB)
            for name in ("torch_allocated", "torch_peak"):
                value = getattr(event, name)
                scalar(f"memory/{name}_mb", None if value is None else value / MB)
            for i, device in enumerate(event.devices):
                used = device.get("used")
                scalar(f"memory/gpu{i}_used_mb", None if used is None else used / MB)
        elif isinstance(event, (RunFinished, RunFailed)):
            self.close()

    def close(self) -> None:
        self.writer.close()  # flushes; writing again later reopens a file


def convert_events(run_dir: Path) -> tuple[Path, int, int]:
    """Replay ``run_dir/events.jsonl`` into ``run_dir/tensorboard`` (replacing what is there,
    which is derived from the same events); returns (directory, events read, damaged lines
    skipped)."""
    run_dir = Path(run_dir)
    events_path = run_dir / "events.jsonl"
    if not events_path.is_file():
        raise EngineError(f"{run_dir}: no events.jsonl (give a run directory)")
    require_tensorboard()
    target = run_dir / DIRECTORY
    tmp = Path(tempfile.mkdtemp(prefix=f".{DIRECTORY}.", dir=run_dir))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; it replaces an ordinary directory
    count = 0
    try:
        consumer = TensorBoardWriter(run_dir, log_dir=tmp)
        log = EventLog(events_path)
        while True:
            for wall_time, event in log.read_new():  # (a line still being written: not yet)
                consumer(event, wall_time)
                count += 1
            if log.at_end:
                break
        consumer.close()
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target, count, log.skipped


def tensorboard_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="transformer-train tensorboard",
        description="Write a run's metrics (events.jsonl) as TensorBoard scalars into "
                    "RUN_DIR/tensorboard; then: tensorboard --logdir RUN_DIR")
    parser.add_argument("run_dir", type=Path, help="a run directory (holds events.jsonl)")
    args = parser.parse_args(argv)
    target, count, skipped = convert_events(args.run_dir)
    print(f"Wrote TensorBoard scalars of {count:,} events to {target}"
          + (f" ({damaged_lines(skipped)})" if skipped else ""))
    return 0
