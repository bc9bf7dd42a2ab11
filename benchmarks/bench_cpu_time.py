"""Where a training run's CPU time goes: user versus kernel time, page faults, peak memory.

A real headless run (default: the quick preset's d_model 256 model on the built-in sample data,
max_tokens 1024, so a few hundred batches), prepared once (data, tokenizer, encoded ids), then
trained from scratch in a child process per variant; the kernel's accounting for the child
(``wait4``) gives user and system CPU time, minor page faults, context switches and peak
resident memory. Variants are environment settings, compared in the same run:

    engine        the engine as it runs (its malloc and oneDNN settings, engine/__init__.py)
    glibc         TRANSFORMER_TUI_MALLOC=glibc: glibc's malloc defaults
    passive       OMP_WAIT_POLICY=PASSIVE: OpenMP threads sleep as soon as they wait (the
                  engine's setting before issue 26; it now spins briefly, GOMP_SPINCOUNT)
    onednn-cache  ONEDNN_PRIMITIVE_CACHE_CAPACITY=1024: oneDNN's default kernel cache
    (more with --variant NAME=VAR=VALUE,VAR=VALUE)

    python benchmarks/bench_cpu_time.py [--epochs 3] [--max-tokens 1024] [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {"engine": {}, "glibc": {"TRANSFORMER_TUI_MALLOC": "glibc"},
            "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
            "onednn-cache": {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024"}}


def run(args: argparse.Namespace, run_dir: Path, env: dict[str, str], until: str = "") -> dict:
    command = [sys.executable, "-m", "engine", "--preset", args.preset, "--run-dir",
               str(run_dir), "--set", "data.source=sample", "--set", "eval.bleu_every=0",
               "--set", f"training.max_tokens={args.max_tokens}",
               "--set", f"training.epochs={args.epochs}", "--set", "training.device=cpu"]
    if until:
        command += ["--until", until]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_DATASETS_OFFLINE": "1",
           "HF_HUB_OFFLINE": "1", **env}
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"run failed: {child.stderr.read().decode()[-500:]}")
    return {"wall": time.perf_counter() - started, "user": usage.ru_utime,
            "system": usage.ru_stime, "minflt": usage.ru_minflt, "maxrss": usage.ru_maxrss * 1024,
            "nvcsw": usage.ru_nvcsw, "nivcsw": usage.ru_nivcsw}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME=VAR=VALUE,VAR=VALUE: another environment to compare")
    parser.add_argument("--only", help="comma-separated variant names to run")
    args = parser.parse_args()
    variants = dict(VARIANTS)
    for item in args.variant:
        name, _, settings = item.partition("=")
        variants[name] = dict(pair.split("=", 1) for pair in settings.split(","))
    if args.only:
        variants = {name: variants[name] for name in args.only.split(",")}

    work = Path(tempfile.mkdtemp(prefix="bench-cpu-"))
    try:
        prepared = work / "prepared"
        run(args, prepared, {}, until="batches")  # data, tokenizer, encoded ids: reused below
        results: dict[str, list[dict]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, env in variants.items():
                run_dir = work / name
                shutil.rmtree(run_dir, ignore_errors=True)
                shutil.copytree(prepared, run_dir, ignore=shutil.ignore_patterns("events.jsonl"))
                results[name].append(run(args, run_dir, env))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"{args.preset} preset, sample data, max_tokens {args.max_tokens}, {args.epochs} "
          f"epochs, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'variant':<10} {'wall s':>7} {'user s':>7} {'sys s':>6} {'kernel':>7} "
          f"{'minor faults':>12} {'peak RSS':>9} {'vol/invol switches':>19}")
    for name, rounds in results.items():
        for r in rounds:
            cpu = r["user"] + r["system"]
            print(f"{name:<10} {r['wall']:>7.1f} {r['user']:>7.1f} {r['system']:>6.1f} "
                  f"{r['system'] / cpu:>7.1%} {r['minflt']:>12,} {r['maxrss'] / 2**30:>7.2f}G "
                  f"{r['nvcsw']:>9,}/{r['nivcsw']:,}")


if __name__ == "__main__":
    main()
