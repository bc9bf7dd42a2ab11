"""The engine's training loop: this source tree against another one (say, the commit before a
change to the step), on the same real run, in alternating rounds.

    git worktree add /tmp/base HEAD~3   # or: git archive HEAD~3 | tar -x -C /tmp/base
    python benchmarks/bench_loop.py --other /tmp/base [--rounds 3] [--threads 1]

Each round trains one epoch of the sample preset (6,000 pairs, the preset's model, fp32, no
BLEU) in a child process of each tree, data and tokenizer prepared beforehand, and times the
train stage: wall-clock seconds and the process's CPU seconds (threads included, the
prefetcher's too). Reported: medians, and this tree / other as ratios of the per-round times
(the two are timed moments apart, so a shared machine's load hits both alike).
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
from engine.config import load_config
from engine.control import RunControl
from engine.events import StageFinished, StageStarted
from engine.pipeline import run
config = load_config("sample", ["training.epochs=1", "eval.bleu_every=0",
                                "training.precision=\"fp32\"", "training.device=\"cpu\""])
marks = {}
def on_event(event):
    if isinstance(event, (StageStarted, StageFinished)) and event.stage == "train":
        kind = "start" if isinstance(event, StageStarted) else "end"
        marks[kind] = (time.perf_counter(), time.process_time())
status = run(config, sys.argv[1], on_event, RunControl(), until=sys.argv[2])
out = {"status": status}
if "end" in marks:
    out["wall"] = marks["end"][0] - marks["start"][0]
    out["cpu"] = marks["end"][1] - marks["start"][1]
print(json.dumps(out))
"""


def child(tree: Path, run_dir: Path, until: str, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(threads),
           "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(run_dir), until, str(threads)],
                          capture_output=True, text=True, env=env, cwd=tree, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"{tree}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", type=Path, required=True, help="the other source tree")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    trees = {"this": HERE, "other": args.other.resolve()}
    times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in trees}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {name: Path(tmp) / name for name in trees}
        for name, tree in trees.items():  # data, tokenizer, encoded ids: made once per tree
            child(tree, dirs[name], "batches", args.threads)
        for round_ in range(args.rounds):
            order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
            for name in order:
                result = child(trees[name], dirs[name], "train", args.threads)
                assert result["status"] == "finished", result
                times[name]["wall"].append(result["wall"])
                times[name]["cpu"].append(result["cpu"])
                print(f"round {round_ + 1} {name:<5} wall {result['wall']:.2f}s "
                      f"cpu {result['cpu']:.2f}s", flush=True)
    print(f"\n{args.rounds} rounds, {args.threads} thread(s), load average "
          f"{os.getloadavg()[0]:.1f}; one epoch of the sample preset (train stage)")
    for name in trees:
        print(f"{name:<5} ({trees[name]}): wall {statistics.median(times[name]['wall']):.2f}s, "
              f"cpu {statistics.median(times[name]['cpu']):.2f}s (medians)")
    for kind in ("wall", "cpu"):
        ratios = [o / t for t, o in zip(times["this"][kind], times["other"][kind])]
        print(f"other / this, {kind}: {statistics.median(ratios):.3f}x "
              f"(rounds {min(ratios):.3f}-{max(ratios):.3f}x; > 1 means this tree is faster)")


if __name__ == "__main__":
    main()
