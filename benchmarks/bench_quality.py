"""A preset on the shared Multi30k files, end to end, as a user runs it: test2016 BLEU (cased and
lowercased sacreBLEU, with their signatures), CPU minutes, wall time, peak memory, the machine.

    python benchmarks/bench_quality.py [--preset tiny] [--seed 1] [--threads N]
        [--data ../shared/data/multi30k] [--run-dir DIR] [--valid-bleu] [--set KEY=VALUE ...]

The run is ``transformer-train`` in a child process (train, validation, the averaged model's
test2016 decoding: everything a user waits for). CPU time and peak resident memory are the
child's own (``getrusage(RUSAGE_CHILDREN)``: the run process and its tokenizer child), so other
work on a shared machine slows the wall time but hardly the CPU minutes.

Choose settings by the validation set, never by test2016: ``--valid-bleu`` then decodes the
validation set with the averaged model (``transformer-train evaluate``, timed apart, not part of
the run's cost) and prints its BLEU. Test BLEU is what the run itself reports at its end.

The last line is the result as JSON, for collecting several runs.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.eventlog import read_events  # noqa: E402
from engine.events import TestBleu  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "multi30k"
FILES = {"train": "train", "valid": "val", "test": "test_2016_flickr"}


def machine(threads: int) -> str:
    """The CPU model, its cores and whether it multiplies bf16 natively (figures depend on it)."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    native = [f for f in ("avx512_bf16", "amx_bf16") if f in flags] or ["no native bf16"]
    # not imported: the run's peak memory would start from this process's (Linux hands a
    # process's high-water mark on to what it executes)
    torch = importlib.metadata.version("torch")
    return (f"{model}, {os.cpu_count()} cores ({', '.join(native)}), torch {torch}, "
            f"the run on {threads or os.cpu_count()} threads")


def data_sets(data: Path, src: str, tgt: str) -> list[str]:
    items = []
    for split, stem in FILES.items():
        for side, lang in (("src", src), ("tgt", tgt)):
            path = data / f"{stem}.{lang}.gz"
            if not path.is_file():
                sys.exit(f"error: {path}: missing (give --data, the folder of Multi30k's "
                         f"{stem}.{lang}.gz and its siblings)")
            items += ["--set", f"data.{split}_{side}={path}"]
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS, 0 = all cores")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--run-dir", type=Path, default=None)
    parser.add_argument("--valid-bleu", action="store_true")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()

    run_dir = args.run_dir or REPO / "saved" / f"quality-{Path(args.preset).stem}-{args.seed}"
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    command = [sys.executable, "-m", "engine", "--preset", args.preset,
               *data_sets(args.data, "en", "de"), "--set", f"training.seed={args.seed}",
               *[item for override in args.overrides for item in ("--set", override)],
               "--run-dir", str(run_dir), "--fresh"]
    log = run_dir.parent / f"{run_dir.name}.log"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine(args.threads)}\nrun: {' '.join(command[3:])}\nlog: {log}", flush=True)
    started = time.monotonic()
    with open(log, "w") as out:
        code = subprocess.call(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    wall = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if code != 0:
        sys.exit(f"error: the run exited with {code}; see {log}")
    tests = [e for e in read_events(run_dir / "events.jsonl") if isinstance(e, TestBleu)]
    test = next((e for e in tests if e.role == "averaged"), tests[-1] if tests else None)
    result = {"preset": args.preset, "seed": args.seed, "overrides": args.overrides,
              "cpu_minutes": round((usage.ru_utime + usage.ru_stime) / 60, 1),
              "wall_minutes": round(wall / 60, 1),
              "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2)}  # Linux: kilobytes
    if test is not None:
        result.update(test_checkpoint=Path(test.checkpoint).name, test_bleu=test.sacrebleu,
                      test_signature=test.sacrebleu_signature,
                      test_bleu_lowercase=test.lowercase_bleu,
                      test_lowercase_signature=test.lowercase_signature)
        print(f"test2016, {test.checkpoint}: {test.sacrebleu:.2f} sacreBLEU "
              f"({test.sacrebleu_signature}), {test.lowercase_bleu:.2f} lowercased "
              f"({test.lowercase_signature})")
    print(f"cost: {result['cpu_minutes']} CPU-min, {result['wall_minutes']} min wall, "
          f"peak RSS {result['peak_rss_gb']} GB")
    if args.valid_bleu:
        checkpoint = run_dir / ("averaged.pt" if (run_dir / "averaged.pt").is_file()
                                else "checkpoint_best.pt")
        started = time.monotonic()
        scored = subprocess.run(
            [sys.executable, "-m", "engine", "evaluate", "--checkpoint", str(checkpoint),
             "--src", str(args.data / "val.en.gz"), "--ref", str(args.data / "val.de.gz"),
             "--lowercase"], cwd=REPO, env=env, capture_output=True, text=True, check=True)
        # "BLEU = 38.12 | ..." then "lowercased BLEU = 38.50 | ..."
        cased, lower = (float(line.split("=")[1].split("|")[0])
                        for line in scored.stdout.splitlines()[:2])
        result.update(valid_bleu=cased, valid_bleu_lowercase=lower)
        print(f"validation ({checkpoint.name}, {time.monotonic() - started:.0f} s apart): "
              f"{cased:.2f} sacreBLEU, {lower:.2f} lowercased")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
