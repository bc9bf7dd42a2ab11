"""A finished run's events.jsonl with fixed numbers and fixed times, for the app's tests and
snapshots: the events are real engine event objects, written in JsonlWriter's line format but
with a fixed clock (JsonlWriter stamps the wall clock, which a snapshot must not depend on)."""

from __future__ import annotations

import math
from pathlib import Path

from engine.events import (
    BatchProgress,
    CheckpointSaved,
    EpochSummary,
    Event,
    MemorySample,
    MergeProgress,
    Preflight,
    RunFinished,
    RunPaused,
    RunStarted,
    StageFinished,
    StageStarted,
    WordCountProgress,
    to_json,
)

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
EPOCHS = 4
BATCHES = 30
STAGES = ["data", "tokenizer", "encode", "batches", "model", "train"]


def jsonl_line(event: Event, at: float) -> str:
    """One line exactly as JsonlWriter writes it, with ``at`` as the time."""
    return to_json(event)[:-1] + f',"time":{at:.3f}}}\n'


def finished_run_events(run_dir: str = "saved/demo") -> list[tuple[float, Event]]:
    events: list[tuple[float, Event]] = []
    t = T0

    def add(event: Event, seconds: float = 0.0) -> None:
        nonlocal t
        t += seconds
        events.append((t, event))

    add(RunStarted(run_dir=run_dir, preset="demo", stages=STAGES))
    add(Preflight(device="cpu", device_names=["Demo CPU"], device_memory_gb=[], threads=2,
                  disk_free_gb=100.0, disk_needed_gb=0.05))
    add(StageStarted(stage="data", index=1, total=6))
    add(StageFinished(stage="data", seconds=0.4, info={"train": 6000, "valid": 300}), 0.4)
    add(StageStarted(stage="tokenizer", index=2, total=6))
    for done in (2000, 4000, 6000):
        add(WordCountProgress(done=done, total=6000, per_second=8000.0, elapsed=done / 8000), 0.25)
    for merges in range(0, 901, 30):
        rate = 600.0 + 300.0 * math.sin(merges / 150)  # a speed that moves, for the sparkline
        add(MergeProgress(merges=merges, target_merges=900, vocab_size=100 + merges,
                          target_vocab=1000, per_second=round(rate, 1),
                          eta=round((900 - merges) / rate, 2), elapsed=round(merges / 600, 2)),
            0.05)
    add(StageFinished(stage="tokenizer", seconds=2.5, info={"vocab_size": 1000}), 0.1)
    add(StageStarted(stage="encode", index=3, total=6))
    add(StageFinished(stage="encode", seconds=0.8, reused=True), 0.8)
    add(StageStarted(stage="batches", index=4, total=6))
    add(StageFinished(stage="batches", seconds=0.2, info={"batches": BATCHES}), 0.2)
    add(StageStarted(stage="model", index=5, total=6))
    add(StageFinished(stage="model", seconds=0.6, info={"parameters": 1_234_567}), 0.6)
    add(StageStarted(stage="train", index=6, total=6))
    train_started = t
    step = 0
    for epoch in range(1, EPOCHS + 1):
        total = 0.0
        for batch in range(1, BATCHES + 1):
            step += 1
            loss = 2.0 + 5.0 * math.exp(-step / 40) + 0.15 * math.sin(step * 1.7)
            total += loss
            add(BatchProgress(epoch=epoch, epochs=EPOCHS, batch=batch, batches=BATCHES, step=step,
                              loss=round(loss, 4), avg_loss=round(total / batch, 4),
                              lr=round(0.0007 * min(step / 30, (30 / step) ** 0.5), 6),
                              batches_per_second=2.0, tokens_per_second=3100.0,
                              eta=(BATCHES - batch) / 2.0, elapsed=batch / 2.0), 0.5)
        add(MemorySample(devices=[], torch_allocated=None, torch_reserved=None, torch_peak=None,
                         process_rss=900 * 2**20 + epoch * 2**20, system_used=6 * 2**30,
                         system_total=16 * 2**30, max_tokens=2048))
        val = 2.2 + 4.0 * math.exp(-step / 45)
        bleu = None if epoch % 2 else round(4.0 + 6.0 * epoch, 2)
        add(EpochSummary(epoch=epoch, epochs=EPOCHS, step=step, train_loss=round(total / BATCHES, 4),
                         train_ppl=round(math.exp(total / BATCHES), 2), val_loss=round(val, 4),
                         val_ppl=round(math.exp(val), 2), bleu=bleu, epoch_seconds=17.0,
                         total_seconds=17.0 * epoch), 2.0)
        names = ["checkpoint_last.pt"] + ([f"model_epoch_{epoch}.pt"] if epoch % 2 == 0 else [])
        if epoch in (1, 2, 4):
            names.append("checkpoint_best.pt")
        for name in names:
            add(CheckpointSaved(path=f"{run_dir}/{name}", name=name, epoch=epoch, step=step,
                                val_loss=round(val, 4), bleu=bleu, size_bytes=15_000_000 + epoch,
                                saved_at=t), 0.1)
    add(StageFinished(stage="train", seconds=round(t + 0.1 - train_started, 3),
                      info={"epochs": EPOCHS}), 0.1)
    add(RunFinished(status="finished", seconds=round(t - T0, 3)))
    return events


def write_finished_run(run_dir: Path, recorded_dir: str = "saved/demo") -> Path:
    """A finished run in ``run_dir``: events.jsonl, config.toml and the checkpoint files its
    events name (small real files: the table marks a checkpoint whose file is gone)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    events = finished_run_events(recorded_dir)
    with open(run_dir / "events.jsonl", "w", encoding="utf-8") as f:
        f.writelines(jsonl_line(event, at) for at, event in events)
    (run_dir / "config.toml").write_text("[training]\nmax_tokens = 2048\n", encoding="utf-8")
    for name in ("checkpoint_last.pt", "checkpoint_best.pt", "model_epoch_4.pt"):
        (run_dir / name).write_bytes(b"\0" * 1024)  # model_epoch_2.pt: removed, as keep_last does
    return run_dir / "events.jsonl"


def write_paused_run(run_dir: Path, steps: int = 75, recorded_dir: str = "saved/demo") -> float:
    """The finished run's events up to update ``steps`` (mid epoch 3), then paused: a run in the
    middle of training. Returns the time of its last event (a fixed clock for the app goes a
    few seconds past it). The caller holds the run's lock, so the run reads as live."""
    run_dir.mkdir(parents=True, exist_ok=True)
    events = []
    for at, event in finished_run_events(recorded_dir):
        if isinstance(event, BatchProgress) and event.step > steps:
            break
        events.append((at, event))
    last = events[-1][0]
    events.append((last + 0.2, RunPaused(stage="train")))
    with open(run_dir / "events.jsonl", "w", encoding="utf-8") as f:
        f.writelines(jsonl_line(event, at) for at, event in events)
    (run_dir / "config.toml").write_text("[training]\nmax_tokens = 2048\n", encoding="utf-8")
    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
        (run_dir / name).write_bytes(b"\0" * 1024)
    return last + 0.2


# the sample preset shrunk to seconds, as --set items: the app's terminal stories start it
SMALL = [
    "data.train_size=1200", "data.valid_size=60", "data.test_size=60",
    "tokenizer.vocab_size=500",
    "model.d_model=32", "model.ffn_hidden=64", "model.n_head=2", "model.n_layers=1",
    "training.epochs=3", "training.max_tokens=512", "training.warmup=50",
    "training.checkpoint_every=1", "eval.beam=1", "eval.bleu_every=1", "eval.bleu_samples=20",
]
