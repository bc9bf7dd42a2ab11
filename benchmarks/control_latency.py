"""Control latency: from a `pause`/`stop` request written to control.json to the run acting on it.

A real run process on the sample preset, started detached as the app starts it
(engine.runs.launch_detached), steered through engine.runs.send_control as
`transformer-train pause|stop DIR` does. Two numbers, each the median over --tries requests:

- pause: request written -> RunPaused in events.jsonl (the run process's main thread picked the
  request up; the engine thread then blocks before its next batch).
- stop: request written -> CheckpointSaved(checkpoint_last.pt) of the stop (the engine acted at
  its next update boundary and saved); each try resumes the run (--resume last) first.

The median time per training batch is printed beside them: the engine acts at the next batch,
so a request waits for the poll (<= POLL_SECONDS) plus at most one batch.

    python benchmarks/control_latency.py [--tries 10] [--run-dir /tmp/latency-run]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from engine import runs


def read_events(run_dir: Path) -> list[dict]:
    path = run_dir / runs.EVENTS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def wait(condition, timeout: float = 300.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.05)
    return value


def request_at(run_dir: Path) -> float:
    return json.loads((run_dir / runs.CONTROL).read_text())["at"]


def batches_after(run_dir: Path, seen: int, count: int) -> bool:
    return sum(e["event"] == "BatchProgress" for e in read_events(run_dir)) >= seen + count


def start(run_dir: Path, resume: bool) -> int:
    argv = ["--preset", "sample", "--run-dir", str(run_dir), "--set", "training.epochs=1000",
            "--set", "eval.bleu_every=0"]
    pid = runs.launch_detached(argv + (["--resume", "last"] if resume else []), run_dir)
    wait(lambda: runs.summarize(run_dir).state == runs.RunState.RUNNING)
    return pid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=10)
    parser.add_argument("--run-dir", type=Path)
    args = parser.parse_args()
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="control-latency-")) / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    rng = random.Random(0)

    start(run_dir, resume=False)
    wait(lambda: batches_after(run_dir, 0, 5))
    pause_latency = []
    for _ in range(args.tries):
        time.sleep(rng.uniform(0.3, 1.0))  # at a random point of a batch
        seen = len(read_events(run_dir))
        runs.send_control(run_dir, "pause")
        at = request_at(run_dir)
        paused = wait(lambda: next((e for e in read_events(run_dir)[seen:]
                                    if e["event"] == "RunPaused"), None))
        pause_latency.append(paused["time"] - at)
        runs.send_control(run_dir, "resume")
        count = sum(e["event"] == "BatchProgress" for e in read_events(run_dir))
        wait(lambda: batches_after(run_dir, count, 2))

    batch_seconds = [1.0 / e["batches_per_second"] for e in read_events(run_dir)
                     if e["event"] == "BatchProgress" and e["batches_per_second"]]
    stop_latency = []
    for attempt in range(args.tries):
        if attempt:
            start(run_dir, resume=True)
        count = sum(e["event"] == "BatchProgress" for e in read_events(run_dir))
        wait(lambda: batches_after(run_dir, count, 3))
        time.sleep(rng.uniform(0.0, 0.5))
        seen = len(read_events(run_dir))
        runs.send_control(run_dir, "stop")
        at = request_at(run_dir)
        saved = wait(lambda: next((e for e in read_events(run_dir)[seen:]
                                   if e["event"] == "CheckpointSaved"
                                   and e["name"] == "checkpoint_last.pt"), None))
        stop_latency.append(saved["saved_at"] - at)
        wait(lambda: runs.summarize(run_dir).state == runs.RunState.STOPPED)

    def ms(values: list[float]) -> str:
        return (f"median {statistics.median(values) * 1000:.0f} ms, min "
                f"{min(values) * 1000:.0f}, max {max(values) * 1000:.0f} (n={len(values)})")

    print(f"sample preset, poll every {runs.POLL_SECONDS * 1000:.0f} ms; "
          f"median batch {statistics.median(batch_seconds) * 1000:.0f} ms")
    print(f"pause request -> RunPaused:                 {ms(pause_latency)}")
    print(f"stop request  -> checkpoint_last.pt saved:  {ms(stop_latency)}")


if __name__ == "__main__":
    main()
