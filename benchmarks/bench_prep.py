"""Prep at WMT14 scale (data -> tokenizer -> encode -> batches) vs the bare libraries, in one run.

    python benchmarks/bench_prep.py [--pairs 300000] [--vocab-size 37000] [--work DIR]

The corpus: N English and N German training sentences whose words are drawn from `wordfreq`'s
frequency lists (as in bench_tokenizer.py; a benchmark dependency only), written as local files
(plus 3,000 validation and 3,003 test pairs, the sizes of newstest2013/2014). WMT14 has 4.5M
pairs (``--pairs 4500000``, about 1.2 GB of text).

Measured, each in a fresh process:
  (a) engine: ``python -m engine --preset full --until batches`` with data.source = local on those
      files (the full preset's tokenizer: shared BPE, 37,000). Stage times come from its
      events.jsonl; CPU time (user + system of the run process and its tokenizer child) is
      sampled at every stage boundary; peak resident memory is the largest sum over the process
      tree, sampled every 20 ms.
  (b) bare: what the library does for the same work with nothing around it: ``Tokenizer.train``
      on the same training files with the same recipe (engine/tokenizer/recipes.py
      ``train_from_files``: the same tokenizer.json as the engine's, checked; a plain ``train``
      without its newline-removing normalizer would learn "word\n" tokens too), then
      ``encode_batch`` of every training sentence, both sides, in chunks of 100,000 (the
      results dropped). CPU time per phase from its own process clock; its peak resident
      memory sampled from outside, every 20 ms, as for the engine.
Ratios: the tokenizer stage over bare training; the whole prep over bare training plus bare
encoding; wall time and CPU time (on a machine shared with other work CPU time is the steadier).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


VALID, TEST = 3_000, 3_003
CHUNK = 100_000  # sentences generated (and encoded, for the bare peer) at a time


# --- corpus --------------------------------------------------------------------------------


def write_sentences(path: Path, lang: str, count: int, seed: int) -> None:
    """``count`` sentences of 5-39 words drawn by frequency from wordfreq's large list."""
    import numpy as np
    import wordfreq

    table = wordfreq.get_frequency_dict(lang, wordlist="large")
    words = np.array(list(table), dtype=object)
    weights = np.fromiter(table.values(), dtype=np.float64, count=len(table))
    weights /= weights.sum()
    temp = path.with_suffix(".tmp")
    with open(temp, "w", encoding="utf-8") as out:
        for start in range(0, count, CHUNK):  # a chunk at a time: 4.5M sentences fit nowhere
            rng = np.random.default_rng([seed, start])
            lengths = rng.integers(5, 40, size=min(CHUNK, count - start))
            drawn = words[rng.choice(len(words), size=int(lengths.sum()), p=weights)]
            lines, at = [], 0
            for length in lengths.tolist():
                text = " ".join(drawn[at:at + length])
                at += length
                lines.append(text[:1].upper() + text[1:] + ".")
            out.write("\n".join(lines) + "\n")
    temp.replace(path)


def corpus_files(work: Path, pairs: int) -> dict[str, Path]:
    folder = work / f"corpus-{pairs}"
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, count, seed in (("train", pairs, 1), ("valid", VALID, 3), ("test", TEST, 5)):
        for lang, offset in (("en", 0), ("de", 1)):
            path = files[f"{split}_{'src' if lang == 'en' else 'tgt'}"] = folder / f"{split}.{lang}"
            if not path.is_file():
                write_sentences(path, lang, count, seed + offset)
    return files


# --- (a) the engine ------------------------------------------------------------------------


def tree_cpu(process) -> float:
    """User + system seconds of a process, its reaped children and its live ones."""
    import psutil

    try:
        times = process.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in process.children(recursive=True):
            try:
                child_times = child.cpu_times()
                total += child_times.user + child_times.system
            except psutil.Error:
                pass
        return total
    except psutil.Error:
        return float("nan")


def measure_engine(files: dict[str, Path], vocab_size: int, run_dir: Path) -> dict:
    import psutil

    shutil.rmtree(run_dir, ignore_errors=True)  # else every stage would reuse the last run
    overrides = ["data.source=local", f"tokenizer.vocab_size={vocab_size}",
                 *(f"data.{key}={path}" for key, path in files.items())]
    command = [sys.executable, "-m", "engine", "--preset", "full", "--until", "batches",
               "--run-dir", str(run_dir)]
    for override in overrides:
        command += ["--set", override]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    process = psutil.Process(child.pid)
    peak = {"total": 0}
    boundaries: dict[str, float] = {}  # "StageStarted:encode" -> CPU seconds then
    read_to = 0
    running = True

    def sample() -> None:
        nonlocal read_to
        events = run_dir / "events.jsonl"
        while running:
            try:
                rss = process.memory_info().rss + sum(
                    c.memory_info().rss for c in process.children(recursive=True))
                peak["total"] = max(peak["total"], rss)
            except psutil.Error:
                pass
            if events.is_file():
                with open(events, encoding="utf-8") as f:
                    f.seek(read_to)
                    lines = f.readlines()
                cpu = None
                for line in lines:
                    if not line.endswith("\n"):
                        break
                    read_to += len(line.encode("utf-8"))
                    event = json.loads(line)
                    if event["event"] in ("StageStarted", "StageFinished"):
                        cpu = tree_cpu(process) if cpu is None else cpu
                        boundaries[f"{event['event']}:{event['stage']}"] = cpu
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = child.communicate()
    seconds = time.monotonic() - started
    running = False
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if child.returncode != 0:
        sys.exit(f"engine run failed ({child.returncode}):\n{stderr[-3000:]}")
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    stages = {}
    for event in events:
        if event["event"] == "StageFinished":
            name = event["stage"]
            cpu = boundaries.get(f"StageFinished:{name}", float("nan")) - boundaries.get(
                f"StageStarted:{name}", float("nan"))
            stages[name] = {"seconds": event["seconds"], "cpu": cpu, "info": event["info"]}
    kinds = {}
    for event in events:
        kinds[event["event"]] = kinds.get(event["event"], 0) + 1
    tokenizer_json = (run_dir / "tokenizer.json").read_bytes()
    return {"sha256": hashlib.sha256(tokenizer_json).hexdigest(),
            "seconds": seconds, "cpu": (after.ru_utime + after.ru_stime)
            - (before.ru_utime + before.ru_stime), "peak": peak["total"], "stages": stages,
            "events": kinds}


# --- (b) the bare libraries, in their own process ------------------------------------------


def measure_bare(files: dict[str, Path], vocab_size: int, out: Path) -> dict:
    """Runs in its own process; CPU time per phase from the process's own clock (every thread;
    no sampler thread in here: the parent samples this process's memory from outside)."""
    from tokenizers import Tokenizer

    from engine.tokenizer.recipes import train_from_files

    result = {}
    started, cpu0 = time.monotonic(), time.process_time()
    tokenizer = train_from_files([files["train_src"], files["train_tgt"]], "bpe", vocab_size,
                                 min_frequency=2)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    result["train"] = {"seconds": time.monotonic() - started, "cpu": time.process_time() - cpu0}
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))  # as a run loads it
    started, cpu0 = time.monotonic(), time.process_time()
    sentences = 0
    for key in ("train_src", "train_tgt"):
        with open(files[key], encoding="utf-8") as f:
            while True:
                chunk = [line.rstrip("\n") for _, line in zip(range(CHUNK), f)]
                if not chunk:
                    break
                tokenizer.encode_batch(chunk, add_special_tokens=False)
                sentences += len(chunk)
    result["encode"] = {"seconds": time.monotonic() - started, "cpu": time.process_time() - cpu0,
                        "sentences": sentences}
    result["sha256"] = hashlib.sha256((out / "tokenizer.json").read_bytes()).hexdigest()
    return result


def run_bare(args: argparse.Namespace, out: Path) -> dict:
    import psutil

    command = [sys.executable, __file__, "--measure", "bare", "--pairs", str(args.pairs),
               "--vocab-size", str(args.vocab_size), "--work", str(args.work), "--out", str(out)]
    child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    process, peak, running = psutil.Process(child.pid), [0], True

    def sample() -> None:
        while running:
            try:
                peak[0] = max(peak[0], process.memory_info().rss)
            except psutil.Error:
                pass
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = child.communicate()
    running = False
    sampler.join()
    if child.returncode != 0:
        sys.exit(f"bare measurement failed:\n{stderr[-3000:]}")
    return {**json.loads(stdout.strip().splitlines()[-1]), "peak": peak[0]}


# --- report --------------------------------------------------------------------------------


def mb(size: float) -> str:
    return f"{size / 2**20:,.0f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=300_000, help="training pairs")
    parser.add_argument("--vocab-size", type=int, default=37_000)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench_prep")
    parser.add_argument("--measure", choices=("bare",), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    started = time.monotonic()
    files = corpus_files(args.work, args.pairs)
    if args.measure:  # inside the bare peer's process
        print(json.dumps(measure_bare(files, args.vocab_size, args.out)))
        return
    size = sum(files[k].stat().st_size for k in ("train_src", "train_tgt"))
    print(f"corpus: {args.pairs:,} training pairs (wordfreq, large lists), {size / 1e6:,.0f} MB "
          f"of training text, ready in {time.monotonic() - started:.1f}s | vocab_size "
          f"{args.vocab_size:,} | {os.cpu_count()} CPUs | load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)

    bare = run_bare(args, args.work / "bare")
    print(f"  bare:   train {bare['train']['seconds']:.1f}s (CPU {bare['train']['cpu']:.1f}s), "
          f"encode {bare['encode']['seconds']:.1f}s (CPU {bare['encode']['cpu']:.1f}s), peak "
          f"{mb(bare['peak'])}", flush=True)
    engine = measure_engine(files, args.vocab_size, args.work / "engine-run")
    print(f"  engine: {engine['seconds']:.1f}s (CPU {engine['cpu']:.1f}s), peak "
          f"{mb(engine['peak'])}", flush=True)

    print("\nengine stages (--preset full --until batches)")
    print(f"  {'stage':<10} {'wall':>8} {'CPU':>8}")
    for name, stage in engine["stages"].items():
        print(f"  {name:<10} {stage['seconds']:>7.1f}s {stage['cpu']:>7.1f}s")
    prep = sum(s["seconds"] for s in engine["stages"].values())
    prep_cpu = sum(s["cpu"] for s in engine["stages"].values())
    print(f"  {'prep':<10} {prep:>7.1f}s {prep_cpu:>7.1f}s   (process start and preflight "
          f"excluded; whole process {engine['seconds']:.1f}s, CPU {engine['cpu']:.1f}s)")
    progress = {k: v for k, v in engine["events"].items() if k.endswith("Progress")}
    print(f"  progress events: {progress}")

    tokenizer, encode = engine["stages"]["tokenizer"], engine["stages"]["encode"]
    bare_train, bare_encode = bare["train"], bare["encode"]
    print("\nratios                                   wall      CPU    goal")
    print(f"  tokenizer stage / bare train       {tokenizer['seconds'] / bare_train['seconds']:>7.3f}x"
          f" {tokenizer['cpu'] / bare_train['cpu']:>7.3f}x   <= 1.15")
    print(f"  encode stage / bare encode_batch   {encode['seconds'] / bare_encode['seconds']:>7.3f}x"
          f" {encode['cpu'] / bare_encode['cpu']:>7.3f}x")
    bare_wall = bare_train["seconds"] + bare_encode["seconds"]
    bare_cpu = bare_train["cpu"] + bare_encode["cpu"]
    print(f"  prep / (bare train + encode)       {prep / bare_wall:>7.3f}x"
          f" {prep_cpu / bare_cpu:>7.3f}x   <= 1.25")
    print(f"  peak memory: engine {mb(engine['peak'])} (goal < 2,560 MB), bare {mb(bare['peak'])}")
    same = engine["sha256"] == bare["sha256"]
    print(f"  same tokenizer.json from the engine and the bare library: {same}")


if __name__ == "__main__":
    main()
