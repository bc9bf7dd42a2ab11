"""Training with several processes: torchrun starts 2 ranks on the CPU (gloo), they train the
sample preset like one process with the same effective batch, and a killed rank ends the job.

The jobs are real: ``python -m torch.distributed.run --standalone --nproc_per_node=2 -m engine``
in child processes, each rank a Python process with its own torch, talking over localhost.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from engine import checkpoint as ckpt
from engine.config import load_config
from engine.control import RunControl
from engine.distributed import shard_order
from engine.eventlog import read_events
from engine.events import (
    BatchProgress,
    CheckpointSaved,
    EpochSummary,
    Notice,
    RunFailed,
    RunFinished,
    RunStarted,
    StageFinished,
)
from engine.pipeline import run

# the sample preset shrunk to a few seconds: 14 batches of <= 400 tokens, a 1-layer model
TINY = ["data.train_size=200", "data.valid_size=20", "data.test_size=10",
        "tokenizer.vocab_size=200", "tokenizer.min_frequency=1",
        "model.d_model=32", "model.ffn_hidden=64", "model.n_head=2", "model.n_layers=1",
        "model.dropout=0.0", "training.max_tokens=400", "training.precision=\"fp32\"",
        "training.device=\"cpu\"", "training.checkpoint_every=1", "eval.bleu_every=0"]


def overrides(*extra: str) -> list[str]:
    return [arg for item in TINY + list(extra) for arg in ("--set", item)]


def torchrun(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "engine", "--preset", "sample", "--run-dir", str(run_dir), *overrides(*extra)]


def job_env(**changes: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **changes}


def test_ranks_split_each_epoch_so_updates_group_the_batches_of_one_process():
    order = np.random.default_rng(0).permutation(15)
    ranks = [shard_order(order, rank, 2) for rank in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 7  # the odd batch is left out: equal steps
    assert not set(ranks[0]) & set(ranks[1])
    # update i of 2 ranks x update_freq 3 = update i of one process with update_freq 6
    for i in range(2):
        together = {b for rank in ranks for b in rank[i * 3:(i + 1) * 3]}
        assert together == set(order[i * 6:(i + 1) * 6])


def test_two_ranks_train_the_model_one_process_trains_with_the_same_effective_batch(
        tmp_path, one_thread):
    # one process, 2 batches an update
    reference = tmp_path / "one"
    config = load_config("sample", TINY + ["training.epochs=1", "training.update_freq=2"])
    events: list = []
    assert run(config, reference, events.append, RunControl()) == "finished"
    batches = next(e for e in events if isinstance(e, StageFinished) and e.stage == "batches")
    assert batches.info["batches_per_epoch"] % 2 == 0  # both runs see every batch

    # two ranks, 1 batch each an update
    job = tmp_path / "two"
    done = subprocess.run(torchrun(job, "training.epochs=1", "training.update_freq=1"),
                          capture_output=True, text=True, env=job_env(), timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    # one writer: one events file telling one run, one set of checkpoints, rank 0's heartbeat
    assert sorted(p.name for p in job.iterdir()) == sorted(
        ["config.toml", "corpus", "data", "events.jsonl", "tokenizer.json", "tokenizer.meta.json",
         "checkpoint_last.pt", "checkpoint_best.pt", "model_epoch_1.pt", "heartbeat"])
    told = list(read_events(job / "events.jsonl"))
    assert sum(isinstance(e, RunStarted) for e in told) == 1
    assert [e.status for e in told if isinstance(e, RunFinished)] == ["finished"]
    assert sum(isinstance(e, EpochSummary) for e in told) == 1
    assert len([e for e in told if isinstance(e, CheckpointSaved)]) == 3

    # the same model after the same updates, and the same losses for the whole job
    one = ckpt.load_checkpoint(reference / ckpt.LAST)
    two = ckpt.load_checkpoint(job / ckpt.LAST)
    assert two["world_size"] == 2 and two["step"] == one["step"] == batches.info[
        "batches_per_epoch"] // 2
    for name, weights in one["model"].items():
        torch.testing.assert_close(two["model"][name], weights, rtol=1e-5, atol=1e-6)
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-6)
    assert two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-6)

    # one process may go on from the job's checkpoint, and is told the batch changed
    alone = tmp_path / "alone"
    shutil.copytree(job, alone)
    events = []
    config = load_config("sample", TINY + ["training.epochs=2", "training.update_freq=1"])
    assert run(config, alone, events.append, RunControl(), resume="last") == "finished"
    notes = [e.text for e in events if isinstance(e, Notice) and e.level == "warning"]
    assert any("trained by 2 process(es), this run has 1" in text for text in notes)

    # a second launch of 2 ranks resumes the job for epoch 2: still the one process's model
    config = load_config("sample", TINY + ["training.epochs=2", "training.update_freq=2"])
    assert run(config, reference, events.append, RunControl(), resume="last") == "finished"
    done = subprocess.run(torchrun(job, "training.epochs=2", "training.update_freq=1") +
                          ["--resume", "last"], capture_output=True, text=True, env=job_env(),
                          timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    one = ckpt.load_checkpoint(reference / ckpt.LAST)
    two = ckpt.load_checkpoint(job / ckpt.LAST)
    assert two["epoch"] == one["epoch"] == 2 and two["step"] == one["step"]
    for name, weights in one["model"].items():
        torch.testing.assert_close(two["model"][name], weights, rtol=1e-5, atol=1e-6)


def test_a_checkpoint_the_ranks_cannot_split_is_refused_in_one_line(tmp_path, one_thread):
    # one process stops after the first batch of epoch 1
    control = RunControl()

    def stop_after_first_batch(event):
        if isinstance(event, BatchProgress):
            control.stop()

    config = load_config("sample", TINY + ["training.epochs=1"])
    assert run(config, tmp_path, stop_after_first_batch, control) == "stopped"
    assert ckpt.load_checkpoint(tmp_path / ckpt.LAST)["batch_in_epoch"] == 1

    done = subprocess.run(torchrun(tmp_path, "training.epochs=1") + ["--resume", "last"],
                          capture_output=True, text=True, env=job_env(), timeout=120)
    assert done.returncode != 0
    failed = [e for e in read_events(tmp_path / "events.jsonl") if isinstance(e, RunFailed)]
    assert len(failed) == 1 and failed[0].stage == "model"
    assert failed[0].message == (
        f"{tmp_path / ckpt.LAST}: saved by 1 process(es) in the middle of epoch 1 after 1 "
        "batches, which 2 processes cannot split evenly: resume with 1 process(es), or from a "
        "checkpoint saved at the end of an epoch (model_epoch_N.pt)")


def test_killing_one_rank_ends_the_job_with_a_clear_error_and_a_loadable_checkpoint(tmp_path):
    job = tmp_path / "job"
    events = job / "events.jsonl"
    launcher = subprocess.Popen(torchrun(job, "training.epochs=500"), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True,
                                env=job_env(TRANSFORMER_DIST_TIMEOUT="20"))
    try:
        deadline = time.monotonic() + 90
        while not (events.is_file() and "CheckpointSaved" in events.read_text()):
            assert launcher.poll() is None and time.monotonic() < deadline, "no checkpoint"
            time.sleep(0.2)
        rank_1 = next(p for p in psutil.Process(launcher.pid).children()
                      if p.environ().get("RANK") == "1")
        rank_1.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        output, _ = launcher.communicate(timeout=60)  # a hang would fail here
    finally:
        if launcher.poll() is None:
            for child in psutil.Process(launcher.pid).children(recursive=True):
                child.kill()
            launcher.kill()
            launcher.communicate()
    assert launcher.returncode != 0
    assert time.monotonic() - killed < 45
    assert "Signal 9 (SIGKILL) received by PID" in output  # torchrun names the dead rank

    # rank 0 said why, last thing in the run's history
    last = list(read_events(events))[-1]
    assert isinstance(last, RunFailed) and last.stage == "train"
    assert ("another process of the job died or stopped answering" in last.message
            or "terminated by SIGTERM" in last.message), last.message
    assert "\n" not in last.message

    model, *_ = ckpt.build_for_inference(job / ckpt.LAST)  # weights, tokenizers and config
    assert not model.training
    assert ckpt.load_checkpoint(job / ckpt.LAST)["epoch"] >= 1
    assert not list(job.glob(f"{ckpt.TEMP_PREFIX}*"))


CONTROL_SCRIPT = '''
import os, sys, time
import torch
import torch.distributed as dist
from engine import distributed, replicas
from engine.errors import EngineError

assert distributed.init_from_env("cpu")
job = distributed._job
rank = distributed.rank()
print(f"rank {rank} control={dist.get_backend(job.control_group)} "
      f"wait={dist.get_backend(job.wait_group)}", flush=True)
# flags and loss sums: every rank learns the job's answer
assert distributed.reduce_sums([1.0, rank]) == [2.0, 1.0]
assert distributed.any_rank(rank == 1) and not distributed.any_rank(False)
# gradients: each becomes the mean over the ranks, parameters start as rank 0's
model = torch.nn.Linear(3, 2)
torch.nn.init.constant_(model.weight, float(rank))
replicas.broadcast_parameters(model)
assert model.weight.eq(0.0).all()
for p in model.parameters():
    p.grad = torch.full_like(p, float(rank + 1))
replicas.average_gradients(list(model.parameters()))
assert all(p.grad.eq(1.5).all() for p in model.parameters())
# the next update reuses the same flat buffer (no allocation per update)
buffer = replicas._flat.buckets[0][1].data_ptr()
for p in model.parameters():
    p.grad = torch.full_like(p, float(2 * rank))
replicas.average_gradients(list(model.parameters()))
assert all(p.grad.eq(1.0).all() for p in model.parameters())
assert replicas._flat.buckets[0][1].data_ptr() == buffer
print(f"rank {rank} agreed", flush=True)
if rank == 1:
    os._exit(0)  # gone without a word, as a killed process
started = time.monotonic()
try:
    distributed.run_stage("train", lambda: distributed.reduce_sums([1.0]), None, sys.argv[1])
except EngineError as exc:
    print(f"rank 0 after {time.monotonic() - started:.1f}s: {exc}", flush=True)
    os._exit(3)
print("rank 0 was not told", flush=True)
'''


def test_control_traffic_goes_over_gloo_and_a_vanished_peer_is_an_error_not_a_hang(tmp_path):
    script = tmp_path / "control.py"
    script.write_text(CONTROL_SCRIPT)
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(script), str(tmp_path)], capture_output=True, text=True, timeout=120,
        env=job_env(TRANSFORMER_DIST_TIMEOUT="20", PYTHONPATH=str(Path(__file__).parents[1])))
    output = done.stdout + done.stderr
    for rank in (0, 1):
        assert f"rank {rank} control=gloo wait=gloo" in output, output[-3000:]
        assert f"rank {rank} agreed" in output, output[-3000:]
    # rank 0 learns of the vanished rank from the control group within the timeout, in words
    assert "another process of the job died or stopped answering" in output, output[-3000:]
    assert "rank 0 was not told" not in output
