"""TensorBoard: a run with log.tensorboard = true leaves scalars TensorBoard reads, and
`transformer-train tensorboard DIR` makes the same scalars from events.jsonl after the fact."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_runs import tiny_config

from engine.config import LogConfig
from engine.control import RunControl
from engine.eventlog import read_events
from engine.events import BatchProgress, EpochSummary, MemorySample, TestBleu
from engine.pipeline import run

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed "
                    "(pip install -e '.[tensorboard]')")


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """What TensorBoard itself reads from the event files: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return {tag: [(s.step, s.value) for s in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def test_a_run_logs_its_metrics_for_tensorboard_and_a_finished_run_converts(tmp_path, one_thread):
    run_dir = tmp_path / "run"
    config = dataclasses.replace(tiny_config(eval__bleu_every=1, eval__bleu_samples=10),
                                 log=LogConfig(tensorboard=True))
    assert run(config, run_dir, lambda event: None, RunControl()) == "finished"
    live = scalars(run_dir / "tensorboard")

    events = list(read_events(run_dir / "events.jsonl"))
    epochs = [e for e in events if isinstance(e, EpochSummary)]
    assert [(s, round(v, 4)) for s, v in live["valid/loss"]] == [
        (e.step, round(e.val_loss, 4)) for e in epochs]
    assert [v for _, v in live["valid/bleu"]] == pytest.approx([e.bleu for e in epochs])
    batches = [e for e in events if isinstance(e, BatchProgress)]
    assert [s for s, _ in live["train/loss"]] == [e.step for e in batches]
    assert [v for _, v in live["train/lr"]] == pytest.approx([e.lr for e in batches])
    assert all(v > 0 for _, v in live["train/tokens_per_second"])
    memory = [e for e in events if isinstance(e, MemorySample)]
    assert len(live["memory/process_rss_mb"]) == len(memory) > 0
    [test] = [e for e in events if isinstance(e, TestBleu)]
    assert [v for _, v in live["test/sacrebleu"]] == pytest.approx([test.sacrebleu])
    assert [v for _, v in live["test/paper_bleu"]] == pytest.approx([test.paper_bleu])

    # after the fact: the same scalars from events.jsonl, replacing the directory
    shutil.rmtree(run_dir / "tensorboard")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "engine", "tensorboard", str(run_dir)],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"to {run_dir / 'tensorboard'}" in result.stdout
    assert scalars(run_dir / "tensorboard") == live


def test_converting_a_directory_without_events_is_one_line_of_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "engine", "tensorboard", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "no events.jsonl" in result.stderr
    assert list(tmp_path.iterdir()) == []
