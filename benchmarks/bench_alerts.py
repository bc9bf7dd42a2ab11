"""Does a [notify] command slow training? The same tiny real run without and with one, in
alternating rounds.

    python benchmarks/bench_alerts.py [--rounds 3] [--epochs 4] [--threads 1]

Each round trains the tests' tiny config (tests/tiny_runs.py: 400 pairs, a 1-layer d=32 model,
fp32, CPU) in a child process twice: "none" without a notify command, "command" with
``notify.target_val_loss`` set so that an alert fires after the first epoch, and a command that
takes 3 s (``sleep 3; cat > /dev/null``) runs while the later epochs train; so the alerts
consumer sees every event and the notifier thread is busy beside the training. Timed: the train
stage's wall seconds per update and the child's CPU seconds (threads included). Reported:
medians per variant and command / none as ratios of the per-round times (timed moments apart, so
a shared machine's load hits both alike).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(int(sys.argv[3]))
from engine.control import RunControl
from engine.events import Alert, BatchProgress, Notice, StageFinished, StageStarted
from tests.tiny_runs import tiny_config
from engine.pipeline import run
changes = {"training__epochs": int(sys.argv[2])}
if sys.argv[4] == "command":
    changes.update(notify__command="sleep 3; cat > /dev/null", notify__target_val_loss=1e9)
config = tiny_config(**changes)
marks, seen = {}, {"steps": 0, "alerts": 0, "warnings": 0}
def on_event(event):
    if isinstance(event, (StageStarted, StageFinished)) and event.stage == "train":
        kind = "start" if isinstance(event, StageStarted) else "end"
        marks[kind] = (time.perf_counter(), time.process_time())
    elif isinstance(event, BatchProgress):
        seen["steps"] = event.step
    elif isinstance(event, Alert):
        seen["alerts"] += 1
    elif isinstance(event, Notice) and event.level == "warning":
        seen["warnings"] += 1
status = run(config, sys.argv[1], on_event, RunControl())
print(json.dumps({"status": status, "wall": marks["end"][0] - marks["start"][0],
                  "cpu": marks["end"][1] - marks["start"][1], **seen}))
"""


def child(run_dir: Path, epochs: int, threads: int, variant: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(HERE), "OMP_NUM_THREADS": str(threads),
           "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(run_dir), str(epochs), str(threads),
                           variant], capture_output=True, text=True, env=env, cwd=HERE,
                          timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"{variant}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {"none": [], "command": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            order = ("none", "command") if i % 2 == 0 else ("command", "none")
            for variant in order:
                got = child(Path(tmp) / f"{variant}-{i}", args.epochs, args.threads, variant)
                assert got["status"] == "finished", got
                results[variant].append(got)
                print(f"round {i + 1} {variant:8s} {1000 * got['wall'] / got['steps']:.1f} ms/update"
                      f"  cpu {got['cpu']:.2f} s  ({got['steps']} updates, {got['alerts']} alerts, "
                      f"{got['warnings']} warnings)", flush=True)
    for variant, rows in results.items():
        print(f"{variant:8s} median {1000 * statistics.median(r['wall'] / r['steps'] for r in rows):.1f}"
              f" ms/update, cpu {statistics.median(r['cpu'] for r in rows):.2f} s")
    wall = [c["wall"] / n["wall"] for c, n in zip(results["command"], results["none"])]
    cpu = [c["cpu"] / n["cpu"] for c, n in zip(results["command"], results["none"])]
    print(f"command / none: step time x{statistics.median(wall):.3f}, "
          f"cpu x{statistics.median(cpu):.3f} (median of {len(wall)} rounds)")


if __name__ == "__main__":
    main()
