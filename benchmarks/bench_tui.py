"""The app's cost to a run: training throughput with the app open versus headless, and how fast
a key press is handled while the tokenizer and the training run.

Throughput: the same config runs through ``engine.pipeline.run`` headless (events to
events.jsonl only) and through the app (TransformerApp under Textual's headless driver at
120x40, every panel drawn), interleaved round by round so that a shared, noisy machine slows
both alike (short runs, many rounds: the load drifts over minutes). The app starts the run as
its own detached run process (python -m engine) and follows its events.jsonl; the headless peer
runs the engine in a plain thread of this process (``--main-thread``: in the main thread, as
transformer-train runs it; with spinning OpenMP threads that alone changed throughput
several-fold on a loaded machine). A run's
training tokens/s is the mean over its epochs of the epoch's average (the last BatchProgress of
an epoch; validation excluded). The ratio app / headless is printed for each round, then the
median and quartiles; the target is >= 0.95. The UI thread's CPU time is printed too: it does
not depend on the machine's load.

Latency: one more app run on a larger tokenizer job; while the tokenizer child process and then
the training run, a key (page switch) is delivered the way the terminal driver delivers it, a
few times a second, and the time until its effect is measured. Target: under 100 ms.

Comparison (``--compare``, nothing else runs): 10 synthetic run directories of 100K updates
each (BatchProgress events, a validation every 10K updates, max_tokens 1024 to 10240), opened
through the app's Pilot as a user does (the run list, space on each run, c); then the x-axis
toggle is pressed N times and the time from the key to the loss chart's next render is measured.
Target: under 150 ms median.

(The README's screenshots are made by docs/make_screenshots.py.)

    python benchmarks/bench_tui.py [--rounds 10] [--pairs 3000]
    python benchmarks/bench_tui.py --loss-history 100000   # key to redraw on the loss page
    python benchmarks/bench_tui.py --compare [--runs 10] [--updates 100000] [--presses 20]

The loss page: a finished run of 100K updates (a progress event each, a validation every 1,000)
is attached at 80x24; the page key 2 (from the run page), w and y are pressed in turn and the
time until the chart has been drawn again is measured. Run it on an older checkout too (the
script works on both shapes of the app) for the ratio to it.

Needs the Multi30k files in ../shared/data/multi30k (see its README).
"""

from __future__ import annotations

import os

# engine/__init__.py sets this too (passive OpenMP waiting); said here as well because this
# benchmark depends on it: with spinning OpenMP threads on a shared, oversubscribed CPU the same
# run was 5-50x slower or faster depending on scheduling luck, which drowns the few percent
# looked for. Both peers get it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from textual import events

from engine import pipeline
from engine.config import load_config
from engine.eventlog import read_events
from engine.events import (
    BatchProgress,
    EpochSummary,
    RunFinished,
    RunStarted,
    to_json,
    to_line,
)
from tui.app import TransformerApp

DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "multi30k").resolve()


def overrides(pairs: int, vocab: int, epochs: int) -> list[str]:
    return [
        "data.source=local",
        f"data.train_src={DATA / 'train.en.gz'}", f"data.train_tgt={DATA / 'train.de.gz'}",
        f"data.valid_src={DATA / 'val.en.gz'}", f"data.valid_tgt={DATA / 'val.de.gz'}",
        f"data.train_size={pairs}", "data.valid_size=200", "data.test_size=0",
        f"tokenizer.vocab_size={vocab}",
        "model.d_model=64", "model.ffn_hidden=128", "model.n_head=4", "model.n_layers=2",
        f"training.epochs={epochs}", "training.max_tokens=1024", "training.warmup=200",
        "training.precision=fp32",  # bf16 on CPU builds kernels per new shape: slow, uneven
        "training.checkpoint_every=100", "eval.bleu_every=0",
    ]


def train_tokens_per_second(run_dir: Path) -> float:
    last_of_epoch: dict[int, BatchProgress] = {}
    for event in read_events(run_dir / "events.jsonl"):
        if isinstance(event, BatchProgress) and event.batch == event.batches:
            last_of_epoch[event.epoch] = event
    if not last_of_epoch:
        raise SystemExit(f"{run_dir}: no finished epoch in events.jsonl")
    return statistics.mean(e.tokens_per_second for e in last_of_epoch.values())


def run_headless(items: list[str], run_dir: Path, main_thread: bool = False) -> float:
    config = load_config("sample", items)
    result: dict[str, str] = {}

    def engine() -> None:
        result["status"] = pipeline.run(config, run_dir, emit=lambda event: None)

    if main_thread:
        engine()
    else:
        thread = threading.Thread(target=engine)
        thread.start()
        thread.join()
    status = result.get("status")
    if status != "finished":
        raise SystemExit(f"headless run {status}; see {run_dir / 'events.jsonl'}")
    return train_tokens_per_second(run_dir)


async def _wait(condition, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("the app run did not get there in time")
        await asyncio.sleep(0.05)


def run_app(items: list[str], run_dir: Path, size=(120, 40)) -> tuple[float, float]:
    """Training tokens/s with the app open, and the share of one core its UI thread used."""
    async def scenario() -> tuple[str, float]:
        app = TransformerApp(preset="sample", overrides=items, run_dir=run_dir)
        async with app.run_test(size=size) as pilot:
            cpu, wall = time.thread_time(), time.perf_counter()  # this thread runs the UI
            await pilot.press("s")
            await _wait(lambda: app.state.status not in ("idle", "starting"), 60)
            await _wait(lambda: not app.state.active, 3600)
            share = (time.thread_time() - cpu) / (time.perf_counter() - wall)
            return app.state.status, share

    status, share = asyncio.run(scenario())
    if status != "finished":
        raise SystemExit(f"app run {status}; see {run_dir / 'events.jsonl'}")
    return train_tokens_per_second(run_dir), share


async def key_latency(app: TransformerApp, key: str, page: str) -> float:
    main = app.query_one("#main")
    started = time.perf_counter()
    app._driver.send_message(events.Key(key, key))  # as the terminal's input thread does
    while not main.has_class(f"-page-{page}"):
        await asyncio.sleep(0.001)
    return time.perf_counter() - started


def measure_latency(items: list[str], run_dir: Path, train_seconds: float) -> dict[str, list[float]]:
    latencies: dict[str, list[float]] = {"idle": [], "tokenizer": [], "train": []}

    async def scenario() -> None:
        app = TransformerApp(preset="sample", overrides=items, run_dir=run_dir)
        async with app.run_test(size=(80, 24)) as pilot:
            for _ in range(10):  # the baseline: this machine, the app open, no run
                latencies["idle"].append(await key_latency(app, "2", "loss"))
                latencies["idle"].append(await key_latency(app, "1", "run"))
                await asyncio.sleep(0.2)
            await pilot.press("s")
            train_started = None
            while app.state.active or app.state.status in ("idle", "starting"):
                stage = app.state.current_stage
                if stage == "train" and app.state.batch is not None:
                    train_started = train_started or time.monotonic()
                    if time.monotonic() - train_started > train_seconds:
                        await pilot.press("x", "y")  # enough: stop (saves a checkpoint)
                        await _wait(lambda: not app.state.active, 120)
                        break
                if stage in latencies and app.state.status == "running":
                    latencies[stage].append(await key_latency(app, "2", "loss"))
                    latencies[stage].append(await key_latency(app, "1", "run"))
                await asyncio.sleep(0.2)

    asyncio.run(scenario())
    return latencies


def write_synthetic_runs(root: Path, runs: int, updates: int) -> list[Path]:
    """``runs`` finished runs of ``updates`` updates each, in 10 epochs, max_tokens 1024 x (i+1):
    events.jsonl in JsonlWriter's format (the progress lines as json.dumps of a template's
    fields: 10^6 events built and serialized one by one would take minutes) and config.toml."""
    template = json.loads(to_json(BatchProgress(
        epoch=1, epochs=10, batch=1, batches=updates // 10, step=1, loss=0.0, avg_loss=0.0,
        lr=0.0, batches_per_second=20.0, tokens_per_second=0.0, eta=0.0, elapsed=0.0)))
    dirs = []
    for i in range(runs):
        run_dir = root / f"mt{1024 * (i + 1)}"
        run_dir.mkdir(parents=True)
        rate, t0 = 20.0 * 1024 * (i + 1), 1_700_000_000.0
        per_epoch = updates // 10
        with open(run_dir / "events.jsonl", "w", encoding="utf-8") as f:
            f.write(to_line(RunStarted(run_dir=str(run_dir), preset="base", stages=["train"]),
                            t0))
            for step in range(1, updates + 1):
                epoch, batch = (step - 1) // per_epoch + 1, (step - 1) % per_epoch + 1
                loss = 2.0 + 6.0 / (1 + step / (500 * (i + 1))) + 0.1 * ((step * 7919) % 13) / 13
                line = dict(template, epoch=epoch, batch=batch, step=step, loss=round(loss, 4),
                            avg_loss=round(loss, 4), lr=1e-3, tokens_per_second=rate,
                            elapsed=batch / 20.0, time=t0 + step / 20.0)
                f.write(json.dumps(line) + "\n")
                if batch == per_epoch:
                    val = loss + 0.2
                    f.write(to_line(EpochSummary(
                        epoch=epoch, epochs=10, step=step, train_loss=loss, train_ppl=1.0,
                        val_loss=round(val, 4), val_ppl=1.0, bleu=round(30 - 3 * val, 2),
                        epoch_seconds=per_epoch / 20.0, total_seconds=step / 20.0,
                        cpu_seconds=step / 10.0), t0 + step / 20.0))
            f.write(to_line(RunFinished(status="finished", seconds=updates / 20.0),
                            t0 + updates / 20.0))
        (run_dir / "config.toml").write_text(
            f"[training]\nmax_tokens = {1024 * (i + 1)}\n", encoding="utf-8")
        dirs.append(run_dir)
    return dirs


def measure_compare(root: Path, runs: int, presses: int) -> tuple[list[float], float]:
    """Key-to-redraw times of the comparison's x toggle, and the seconds it took to open."""
    from textual.widgets import DataTable

    from tui.screens.compare import CompareScreen
    from tui.screens.runs import RunsScreen

    latencies: list[float] = []

    async def scenario() -> float:
        app = TransformerApp(show_runs=True, runs_dir=root)
        async with app.run_test(size=(120, 40)) as pilot:
            opened = time.perf_counter()
            await _wait(lambda: isinstance(app.screen, RunsScreen)
                        and app.screen.query_one(DataTable).row_count == runs, 1800)
            for row in range(runs):  # space on each run, as a user marks them
                app.screen.query_one(DataTable).move_cursor(row=row)
                await pilot.press("space")
            await pilot.press("c")
            await _wait(lambda: isinstance(app.screen, CompareScreen)
                        and len(app.screen.compared) == runs, 1800)
            await pilot.pause(0.5)
            opened = time.perf_counter() - opened
            screen = app.screen
            plot = screen.query_one("#compare-loss")
            rendered: list[float] = []
            render = plot.render

            def timed_render():
                result = render()
                rendered.append(time.perf_counter())
                return result

            plot.render = timed_render
            for _ in range(presses):
                seen, axis = len(rendered), screen.axis
                started = time.perf_counter()
                app._driver.send_message(events.Key("x", "x"))  # as the terminal delivers it
                while screen.axis == axis or len(rendered) == seen:
                    await asyncio.sleep(0.001)
                latencies.append(rendered[-1] - started)
                await asyncio.sleep(0.2)
            return opened

    opened = asyncio.run(scenario())
    return latencies, opened


def _summary(values: list[float]) -> str:
    if not values:
        return "no presses (stage too short)"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return (f"n={len(ordered)} median {1000 * statistics.median(ordered):.0f} ms, "
            f"p95 {1000 * p95:.0f} ms, max {1000 * ordered[-1]:.0f} ms")


# --- the loss page with a long run's history ------------------------------------------------


def write_long_run(run_dir: Path, steps: int) -> None:
    """A finished run of ``steps`` updates, a BatchProgress each (what a run that reports every
    update writes), a validation with BLEU every steps/100 updates."""
    from engine.events import EpochSummary, RunFinished, RunStarted, StageStarted, to_json

    run_dir.mkdir(parents=True, exist_ok=True)
    every = max(steps // 100, 1)
    with open(run_dir / "events.jsonl", "w", encoding="utf-8") as f:
        def write(event, at: float) -> None:
            f.write(to_json(event)[:-1] + f',"time":{at:.3f}}}\n')

        write(RunStarted(run_dir=str(run_dir), preset="demo", stages=["train"]), 1000.0)
        write(StageStarted(stage="train", index=1, total=1), 1000.0)
        for step in range(1, steps + 1):
            loss = 9.7 * 0.9999 ** step + 1.2
            write(BatchProgress(epoch=step // every + 1, epochs=100, batch=step % every + 1,
                                batches=every, step=step, loss=loss, avg_loss=loss,
                                lr=1e-3 / (1 + step) ** 0.5, batches_per_second=5.0,
                                tokens_per_second=20000.0, eta=1.0, elapsed=step / 5,
                                gnorm=1.0), 1000.0 + step / 5)
            if step % every == 0:
                write(EpochSummary(epoch=step // every, epochs=100, step=step, train_loss=loss,
                                   train_ppl=1.0, val_loss=loss + 0.1, val_ppl=1.0,
                                   bleu=step / steps * 30, epoch_seconds=1.0,
                                   total_seconds=step / 5), 1000.0 + step / 5)
        write(RunFinished(status="finished", seconds=steps / 5), 1000.0 + steps / 5)


def measure_loss_page(run_dir: Path, presses: int) -> tuple[dict[str, list[float]], dict]:
    """Key to redraw on the loss page at 80x24: the page key (2, from the run page) until the
    chart has been drawn again, and, where the app has them, w and y (window, log scale)."""
    times: dict[str, list[float]] = {"2": [], "w": [], "y": []}
    cpu: dict[str, list[float]] = {"2": [], "w": [], "y": []}  # the UI thread's, per press

    async def scenario() -> None:
        app = TransformerApp(attach=run_dir)
        async with app.run_test(size=(80, 24)):
            await _wait(lambda: app.state.status == "finished", 600)
            screen = getattr(app, "dashboard", app)  # the App itself before the screens
            panel = screen.query_one("#loss")
            keys = [key for key in ("w", "y") if key in {b.key for b in screen.BINDINGS}]
            for _ in range(presses):
                for key, page in (("1", "run"), ("2", "loss"), *((k, None) for k in keys)):
                    draws = getattr(panel, "draws", 0)
                    started, started_cpu = time.perf_counter(), time.thread_time()
                    app._driver.send_message(events.Key(key, key))
                    if page == "run":
                        await _wait(lambda: screen.query_one("#main").has_class("-page-run"), 10)
                        await asyncio.sleep(0.05)
                        continue
                    await _wait(lambda: getattr(panel, "draws", 0) > draws, 10)
                    await asyncio.sleep(0)  # the frame with the new chart
                    times[key].append(time.perf_counter() - started)
                    cpu[key].append(time.thread_time() - started_cpu)

    asyncio.run(scenario())
    return times, cpu


def loss_page_main(steps: int, presses: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench_tui_loss_"))
    try:
        write_long_run(work / "run", steps)
        process_cpu = time.process_time()
        times, cpu = measure_loss_page(work / "run", presses)
        print(f"loss page, {steps:,}-step history, 80x24 (CPU time of the whole measurement "
              f"{time.process_time() - process_cpu:.1f} s):")
        for key, label in (("2", "page key 2 -> chart drawn"), ("w", "w (window) -> drawn"),
                           ("y", "y (log scale) -> drawn")):
            used = f"; UI thread CPU median {1000 * statistics.median(cpu[key]):.0f} ms" \
                if cpu[key] else ""
            print(f"  {label:<28} {_summary(times[key])}{used}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--pairs", type=int, default=3000, help="training pairs per run")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--latency-pairs", type=int, default=29000)
    parser.add_argument("--latency-vocab", type=int, default=8000)
    parser.add_argument("--main-thread", action="store_true",
                        help="also time the headless engine in the main thread (as the CLI runs)")
    parser.add_argument("--compare", action="store_true",
                        help="only the comparison's key-to-redraw latency (synthetic runs)")
    parser.add_argument("--runs", type=int, default=10, help="--compare: runs compared")
    parser.add_argument("--updates", type=int, default=100_000, help="--compare: per run")
    parser.add_argument("--presses", type=int, default=20, help="--compare, --loss-history: key "
                        "presses timed")
    parser.add_argument("--loss-history", type=int, default=0, metavar="STEPS",
                        help="only: key to redraw on the loss page with a run of STEPS updates")
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if args.loss_history:
        loss_page_main(args.loss_history, args.presses)
        return
    if args.compare:
        work = Path(tempfile.mkdtemp(prefix="bench_compare_"))
        try:
            started = time.perf_counter()
            write_synthetic_runs(work, args.runs, args.updates)
            print(f"wrote {args.runs} runs of {args.updates:,} updates in "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
            latencies, opened = measure_compare(work, args.runs, args.presses)
            print(f"run list + marking + comparison read, until drawn: {opened:.1f} s")
            print(f"comparison x toggle, key to redraw: {_summary(latencies)} (target: median "
                  "under 150 ms)")
            print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    if not (DATA / "train.en.gz").is_file():
        raise SystemExit(f"Multi30k not found at {DATA}")
    work = Path(tempfile.mkdtemp(prefix="bench_tui_"))
    try:
        items = overrides(args.pairs, 2000, args.epochs)
        print(f"config: sample preset, Multi30k {args.pairs} pairs, vocab 2000, d_model 64, "
              f"{args.epochs} epochs; {os.cpu_count()} CPUs; app at 120x40 (headless driver); "
              f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")
        if args.rounds:  # --rounds 0: only the latency
            run_headless(overrides(1000, 500, 1), work / "warmup")  # first-run costs, for neither
            ratios = []
            for round_ in range(1, args.rounds + 1):
                if round_ % 2:  # alternate who goes first, so that drift cancels
                    headless = run_headless(items, work / f"headless{round_}")
                    app, share = run_app(items, work / f"app{round_}")
                else:
                    app, share = run_app(items, work / f"app{round_}")
                    headless = run_headless(items, work / f"headless{round_}")
                ratios.append(app / headless)
                print(f"round {round_}: headless {headless:,.0f} tok/s, app {app:,.0f} tok/s, "
                      f"app/headless {app / headless:.3f} (UI thread: {100 * share:.1f}% of a core)",
                      flush=True)
            quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
            print(f"median app/headless throughput: {statistics.median(ratios):.3f} "
                  f"(quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f}; target >= 0.95)")
            if args.main_thread:
                main_rate = run_headless(items, work / "main-thread", main_thread=True)
                print(f"headless in the main thread: {main_rate:,.0f} tok/s")

        latency = measure_latency(overrides(args.latency_pairs, args.latency_vocab, 1),
                                  work / "latency", train_seconds=15)
        print(f"key press latency, app open, no run:         {_summary(latency['idle'])}")
        print(f"key press latency while the tokenizer runs: {_summary(latency['tokenizer'])}")
        print(f"key press latency while training runs:      {_summary(latency['train'])}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
