"""Does fit's recommendation hold? Fit, then train at the recommendation and probe above it.

On the CPU with a memory budget (default: the quick preset's model on the built-in sample data,
offline, ``training.memory_budget = 1.5`` GiB):

1. ``fit`` measures the worst batches and validation beam search in child processes and
   recommends max_tokens;
2. a real run trains two epochs at the recommendation (``transformer-train``, a child process:
   its preflight checks the worst batch of the data against the budget); its peak resident
   memory (the kernel's count for the child, from ``wait4``) must stay under the budget;
3. the worst-case probe at 1.3 x the recommendation must exceed the budget: the recommendation
   is within 30% of the true limit. The same run at 1.3 x is reported too (the sample data's
   sentences are short, far from the worst case the fit guards against).

    python benchmarks/bench_fit.py [--preset quick] [--budget 1.5] [--epochs 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from engine.config import load_config
from engine.fit import GIB, fit
from engine.fit_probe import measure_in_child

ROOT = Path(__file__).resolve().parent.parent


def train(preset: str, overrides: list[str], run_dir: Path) -> dict:
    """A real run in a child process: its exit status, peak resident memory, CPU and wall time."""
    command = [sys.executable, "-m", "engine", "--preset", preset, "--run-dir", str(run_dir)]
    for item in overrides:
        command += ["--set", item]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_DATASETS_OFFLINE": "1",
           "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    polled = 0
    with open(run_dir.parent / f"{run_dir.name}.log", "w") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                 cwd=ROOT)
        process = psutil.Process(child.pid)
        while True:  # also sampled: the run resets its peak once (preflight)
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            try:
                polled = max(polled, process.memory_info().rss)
            except psutil.Error:
                pass
            time.sleep(0.02)
    return {"exit": os.waitstatus_to_exitcode(status),
            "peak_rss": max(usage.ru_maxrss * 1024, polled),
            "user": usage.ru_utime, "system": usage.ru_stime,
            "wall": time.perf_counter() - started,
            "failure": _failure(run_dir.parent / f"{run_dir.name}.log")}


def _failure(log: Path) -> str:
    lines = [line for line in log.read_text().splitlines() if "FAILED" in line or "error" in line]
    return lines[-1] if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--budget", type=float, default=1.5, help="training.memory_budget, GiB")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--over", type=float, default=1.3, help="the factor above the answer")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    overrides = ["data.source=sample", f"training.memory_budget={args.budget}",
                 "training.device=cpu"]
    config = load_config(args.preset, overrides)
    started = time.perf_counter()
    result = fit(config, "cpu", report=lambda text: print(text, flush=True))
    print("\n".join(result.recommendation()))
    print(f"fit took {time.perf_counter() - started:.0f} s, {len(result.points)} probes\n")
    rec = result.max_tokens
    over = int(rec * args.over)
    probe_over = measure_in_child(config, "cpu", over)

    work = Path(tempfile.mkdtemp(prefix="bench-fit-"))
    try:
        runs = {}
        for name, max_tokens in (("at", rec), ("over", over)):
            runs[name] = train(args.preset, overrides + [f"training.max_tokens={max_tokens}",
                                                        f"training.epochs={args.epochs}"],
                               work / name)
            r = runs[name]
            print(f"training {args.epochs} epochs at max_tokens {max_tokens:,}: exit {r['exit']}, "
                  f"peak RSS {r['peak_rss'] / GIB:.3f} GiB "
                  f"({'under' if r['peak_rss'] <= result.budget_bytes else 'OVER'} the "
                  f"{args.budget} GiB budget), {r['wall']:.0f} s wall, "
                  f"{r['user'] + r['system']:.0f} s CPU{'; ' + r['failure'] if r['failure'] else ''}",
                  flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    budget = result.budget_bytes
    print(f"\nworst-case probe at {args.over} x the recommendation (max_tokens {over:,}): "
          + ("out of memory" if probe_over is None else f"peak {probe_over / GIB:.3f} GiB")
          + f" -> {'exceeds' if probe_over is None or probe_over > budget else 'DOES NOT exceed'}"
          f" the {args.budget} GiB budget")
    ok = runs["at"]["exit"] == 0 and runs["at"]["peak_rss"] <= budget and (
        probe_over is None or probe_over > budget)
    print(f"recommendation {rec:,}: trains under the budget and is within "
          f"{(args.over - 1):.0%} of the limit: {'yes' if ok else 'NO'}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "fit": json.loads(result.to_json()), "over_max_tokens": over,
            "probe_over_peak": probe_over, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
