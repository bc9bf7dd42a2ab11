"""Tokenizer stage vs bare `tokenizers` vs a full-scan Python trainer, on one corpus, in one run.

    python benchmarks/bench_tokenizer.py [--sentences 1000000] [--vocab-size 37000]
    python benchmarks/bench_tokenizer.py --recipe-cost     (the pre-tokenization's own cost)

The corpus: N English and N German sentences whose words are drawn from the word-frequency lists
that `wordfreq` ships (a benchmark dependency only). BPE training sees nothing but the word
frequency table, so sampled sentences exercise it like real ones of the same word distribution.

Measured, each in a fresh process that first loads the corpus into memory (as a run holds it):
  (a) engine: ``run_tokenizer_stage`` (child process, stdin streaming, events, files)
  (b) bare:   ``Tokenizer.train_from_iterator`` in-process, the same recipe, no progress output
  (c) python: the seed's way: count words, then each merge recounts every pair by a full scan of
      the word table; capped at a few hundred merges (or a time limit), reported as merges/s
Engine and bare run alternately ``--repeats`` times; the fastest of each is compared. Peak memory
is the largest resident memory of the measuring process plus its children (the engine's trainer
child), sampled every 20 ms. CPU time (user + system, parent and child) is printed beside wall
time: on a machine shared with other work it is the steadier of the two.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# glibc's malloc as the tokenizer child process has it (engine/tokenizer/supervisor.py), set
# before anything here imports the engine
os.environ["TRANSFORMER_TUI_MALLOC"] = "glibc"


# --- corpus --------------------------------------------------------------------------------


def sample_sentences(lang: str, count: int, seed: int) -> list[str]:
    """Sentences of 5-39 words drawn by frequency from wordfreq's large list for ``lang``."""
    import numpy as np
    import wordfreq

    table = wordfreq.get_frequency_dict(lang, wordlist="large")
    words = np.array(list(table), dtype=object)
    weights = np.fromiter(table.values(), dtype=np.float64, count=len(table))
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 40, size=count)
    drawn = words[rng.choice(len(words), size=int(lengths.sum()), p=weights / weights.sum())]
    sentences, start = [], 0
    for length in lengths.tolist():
        text = " ".join(drawn[start:start + length])
        start += length
        sentences.append(text[:1].upper() + text[1:] + ".")
    return sentences


def corpus_files(work: Path, count: int) -> tuple[Path, Path]:
    files = (work / f"corpus.{count}.en.txt", work / f"corpus.{count}.de.txt")
    for path, lang, seed in zip(files, ("en", "de"), (1, 2)):
        if not path.is_file():
            temp = path.with_suffix(".tmp")
            temp.write_text("\n".join(sample_sentences(lang, count, seed)) + "\n", encoding="utf-8")
            temp.replace(path)
    return files


def load_pairs(files: tuple[Path, Path]) -> list[tuple[str, str]]:
    sides = []
    for path in files:
        with open(path, encoding="utf-8") as lines:
            sides.append([line.rstrip("\n") for line in lines])
    return list(zip(*sides))


# --- measurements (each in its own process) ------------------------------------------------


class PeakMemory:
    """Largest resident memory of this process plus its children, sampled every 20 ms.

    (getrusage's ru_maxrss cannot be used: a child started from a large parent inherits the
    parent's high-water mark across fork and exec.)
    """

    def __init__(self) -> None:
        import psutil

        self.process = psutil.Process()
        self.peak_total = self.peak_self = self.peak_children = 0
        self.running = True
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def rss(self) -> tuple[int, int]:
        own = self.process.memory_info().rss
        children = 0
        for child in self.process.children(recursive=True):
            try:
                children += child.memory_info().rss
            except Exception:  # ended between listing and reading
                pass
        return own, children

    def sample(self) -> None:
        while self.running:
            own, children = self.rss()
            self.peak_self = max(self.peak_self, own)
            self.peak_children = max(self.peak_children, children)
            self.peak_total = max(self.peak_total, own + children)
            time.sleep(0.02)

    def __enter__(self) -> "PeakMemory":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self.thread.join()


def cpu_seconds() -> float:
    """CPU time of this process and its finished children: steadier than wall time on a busy
    machine, where two processes draw more of the CPUs than one."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def measure_engine(pairs: list[tuple[str, str]], vocab_size: int, out: Path) -> dict:
    from engine.config import config_from_dict
    from engine.control import RunControl
    from engine.data.corpus import Corpus
    from engine.events import MergeProgress, WordCountProgress
    from engine.tokenizer.stage import run_tokenizer_stage

    corpus = Corpus(train=pairs, valid=[], test=[])
    config = config_from_dict({"tokenizer": {"vocab_size": vocab_size, "shared": True,
                                             "kind": "bpe", "min_frequency": 2}})
    arrivals: list[tuple[float, int]] = []

    counted = 0.0

    def emit(event: object) -> None:
        nonlocal counted
        if isinstance(event, WordCountProgress) and event.done == event.total:
            counted = time.monotonic()
        if isinstance(event, MergeProgress):
            arrivals.append((time.monotonic(), event.merges))

    shutil.rmtree(out, ignore_errors=True)  # else the stage would reuse an earlier run's result
    out.mkdir(parents=True)
    started, cpu = time.monotonic(), cpu_seconds()
    with PeakMemory() as memory:
        result = run_tokenizer_stage(config.tokenizer, corpus, out, emit, RunControl())
    seconds, cpu = time.monotonic() - started, cpu_seconds() - cpu
    # merges per second over the merge phase: from the first event to the final one
    (t_first, m_first), (t_last, m_last) = arrivals[0], arrivals[-1]
    merge_rate = (m_last - m_first) / (t_last - t_first) if t_last > t_first else float("nan")
    return {"seconds": seconds, "cpu": cpu, "peak": memory.peak_total,
            "peak_parent": memory.peak_self, "peak_child": memory.peak_children,
            "merges": result.info["merges"], "vocab": result.info["vocab_size"],
            "unique_words": result.info["unique_words"], "alphabet": result.info["alphabet"],
            "merge_events": len(arrivals), "merge_event_span": t_last - t_first,
            "merge_phase_rate": merge_rate, "word_count_seconds": counted - started,
            "sha256": hashlib.sha256((out / "tokenizer.json").read_bytes()).hexdigest()}


def measure_bare(pairs: list[tuple[str, str]], vocab_size: int, out: Path) -> dict:
    from engine.tokenizer.recipes import train_in_process

    sentences = [src for src, _ in pairs] + [tgt for _, tgt in pairs]
    started, cpu = time.monotonic(), cpu_seconds()
    with PeakMemory() as memory:
        tokenizer = train_in_process(sentences, "bpe", vocab_size, min_frequency=2)
        out.mkdir(parents=True, exist_ok=True)
        tokenizer.save(str(out / "tokenizer.json"))
    seconds, cpu = time.monotonic() - started, cpu_seconds() - cpu
    return {"seconds": seconds, "cpu": cpu, "peak": memory.peak_total, "vocab": tokenizer.get_vocab_size(),
            "sha256": hashlib.sha256((out / "tokenizer.json").read_bytes()).hexdigest()}


# The recipe's own cost: bare `tokenizers` training from the corpus files (as the child process
# trains), with the recipe's pre-tokenization against peers, each in a fresh process.
PRE_TOKENIZERS = {
    "metaspace": "Metaspace alone: words only, punctuation stays on them",
    "recipe": "the recipe (engine/tokenizer/recipes.py)",
    "metaspace+punctuation": "Metaspace then Punctuation, two pre-tokenizers (recipe 1)",
}


def pre_tokenizer_peer(name: str):
    from tokenizers import pre_tokenizers

    from engine.tokenizer.recipes import new_tokenizer

    tokenizer = new_tokenizer("bpe")
    if name == "metaspace":
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    elif name == "metaspace+punctuation":
        tokenizer.normalizer = None
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation()])
    return tokenizer


def measure_recipe(name: str, files: tuple[Path, Path], vocab_size: int) -> dict:
    import engine.tokenizer.recipes as recipes

    peer = pre_tokenizer_peer(name)
    recipes.new_tokenizer = lambda kind: peer  # this process only
    started, cpu = time.monotonic(), cpu_seconds()
    tokenizer = recipes.train_from_files(list(files), "bpe", vocab_size, min_frequency=2)
    return {"seconds": time.monotonic() - started, "cpu": cpu_seconds() - cpu,
            "vocab": tokenizer.get_vocab_size()}


def recipe_cost(args: argparse.Namespace, files: tuple[Path, Path]) -> None:
    runs: dict[str, list[dict]] = {name: [] for name in PRE_TOKENIZERS}
    for repeat in range(args.repeats):
        for name in PRE_TOKENIZERS:  # interleaved: a noisy spell slows all of them alike
            runs[name].append(run_measurement(f"recipe:{name}", args, files, args.work))
            print(f"  {name:22} run {repeat + 1}: {runs[name][-1]['seconds']:.1f}s, CPU "
                  f"{runs[name][-1]['cpu']:.1f}s", flush=True)
    base_wall = min(r["seconds"] for r in runs["metaspace"])
    base_cpu = min(r["cpu"] for r in runs["metaspace"])
    print(f"\nrecipe cost (bare tokenizers from files, vocab {args.vocab_size:,}; fastest of "
          f"{args.repeats}), against Metaspace alone:")
    for name, label in PRE_TOKENIZERS.items():
        wall, cpu = min(r["seconds"] for r in runs[name]), min(r["cpu"] for r in runs[name])
        print(f"  {name:22} {wall:6.1f}s wall {wall / base_wall:.2f}x | {cpu:6.1f}s CPU "
              f"{cpu / base_cpu:.2f}x | {label}")


def measure_python(pairs: list[tuple[str, str]], max_merges: int, max_seconds: float) -> dict:
    """The seed's trainer: word counts, then per merge a full scan for the best pair."""
    started = time.monotonic()
    counts: collections.Counter[str] = collections.Counter()
    for src, tgt in pairs:
        counts.update(src.split())
        counts.update(tgt.split())
    words = {tuple(word) + ("</w>",): freq for word, freq in counts.items()}
    counted = time.monotonic() - started

    merges, merge_started = 0, time.monotonic()
    while merges < max_merges and time.monotonic() - merge_started < max_seconds:
        pairs_count: collections.defaultdict[tuple[str, str], int] = collections.defaultdict(int)
        for symbols, freq in words.items():
            for pair in zip(symbols, symbols[1:]):
                pairs_count[pair] += freq
        if not pairs_count:
            break
        best = max(pairs_count, key=pairs_count.__getitem__)
        merged = best[0] + best[1]
        new_words = {}
        for symbols, freq in words.items():
            if best[0] in symbols:
                out, i = [], 0
                while i < len(symbols):
                    if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                        out.append(merged)
                        i += 2
                    else:
                        out.append(symbols[i])
                        i += 1
                symbols = tuple(out)
            new_words[symbols] = freq
        words = new_words
        merges += 1
    merge_seconds = time.monotonic() - merge_started
    return {"count_seconds": counted, "unique_words": len(counts), "merges": merges,
            "merge_seconds": merge_seconds, "merges_per_second": merges / merge_seconds}


def run_measurement(kind: str, args: argparse.Namespace, files: tuple[Path, Path],
                    out: Path) -> dict:
    """One measurement in a fresh interpreter, so peaks and caches do not leak between them."""
    command = [sys.executable, __file__, "--measure", kind, "--sentences", str(args.sentences),
               "--vocab-size", str(args.vocab_size), "--work", str(args.work),
               "--python-merges", str(args.python_merges),
               "--python-seconds", str(args.python_seconds), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        sys.exit(f"{kind} measurement failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sentences", type=int, default=1_000_000, help="per language")
    parser.add_argument("--vocab-size", type=int, default=37_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--python-merges", type=int, default=300)
    parser.add_argument("--python-seconds", type=float, default=120.0)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench_tokenizer")
    parser.add_argument("--recipe-cost", action="store_true",
                        help="only the recipe's pre-tokenization against Metaspace alone")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    if args.measure:  # inside a measuring process
        files = corpus_files(args.work, args.sentences)
        if args.measure.startswith("recipe:"):  # from the files, as the child process trains
            print(json.dumps(measure_recipe(args.measure.split(":", 1)[1], files,
                                            args.vocab_size)))
            return
        pairs = load_pairs(files)
        base = PeakMemory().rss()[0]  # the corpus in memory, before any training
        if args.measure == "engine":
            result = measure_engine(pairs, args.vocab_size, args.out)
        elif args.measure == "bare":
            result = measure_bare(pairs, args.vocab_size, args.out)
        else:
            result = measure_python(pairs, args.python_merges, args.python_seconds)
        result["base"] = base
        print(json.dumps(result))
        return

    started = time.monotonic()
    files = corpus_files(args.work, args.sentences)
    print(f"corpus: {args.sentences:,} + {args.sentences:,} sentences (wordfreq, large lists), "
          f"{sum(p.stat().st_size for p in files) / 1e6:.0f} MB, ready in "
          f"{time.monotonic() - started:.1f}s | vocab_size {args.vocab_size:,} | "
          f"{os.cpu_count()} CPUs", flush=True)
    if args.recipe_cost:
        recipe_cost(args, files)
        return
    engine_runs, bare_runs = [], []
    for repeat in range(args.repeats):
        engine_runs.append(run_measurement("engine", args, files, args.work / f"engine{repeat}"))
        print(f"  engine run {repeat + 1}: {engine_runs[-1]['seconds']:.1f}s, CPU "
              f"{engine_runs[-1]['cpu']:.1f}s, peak "
              f"{engine_runs[-1]['peak'] / 2**20:,.0f} MB", flush=True)
        bare_runs.append(run_measurement("bare", args, files, args.work / f"bare{repeat}"))
        print(f"  bare   run {repeat + 1}: {bare_runs[-1]['seconds']:.1f}s, CPU "
              f"{bare_runs[-1]['cpu']:.1f}s, peak "
              f"{bare_runs[-1]['peak'] / 2**20:,.0f} MB", flush=True)
    python = run_measurement("python", args, files, args.work / "python")

    engine = min(engine_runs, key=lambda r: r["seconds"])
    bare = min(bare_runs, key=lambda r: r["seconds"])
    engine_peak = min(r["peak"] for r in engine_runs)
    bare_peak = min(r["peak"] for r in bare_runs)
    stage_rate = engine["merges"] / engine["seconds"]
    engine_rate = engine["merge_phase_rate"]
    print(f"\nengine: {engine['seconds']:.1f}s | {engine['merges']:,} merges | vocab "
          f"{engine['vocab']:,} | {engine['unique_words']:,} unique words | alphabet "
          f"{engine['alphabet']:,} | peak {engine_peak / 2**20:,.0f} MB (parent "
          f"{engine['peak_parent'] / 2**20:,.0f} + child {engine['peak_child'] / 2**20:,.0f}; "
          f"corpus loaded: {engine['base'] / 2**20:,.0f} MB)")
    print(f"bare:   {bare['seconds']:.1f}s | vocab {bare['vocab']:,} | peak "
          f"{bare_peak / 2**20:,.0f} MB (corpus loaded: {bare['base'] / 2**20:,.0f} MB)")
    print(f"python: {python['merges']} merges in {python['merge_seconds']:.1f}s after counting "
          f"{python['unique_words']:,} words in {python['count_seconds']:.1f}s")
    print(f"merge events: {engine['merge_events']} arrived over {engine['merge_event_span']:.1f}s "
          f"of merging ({engine['merge_events'] / max(engine['merge_event_span'], 1e-9):.1f}/s)")
    print(f"same tokenizer.json from engine and bare: {engine['sha256'] == bare['sha256']}")
    print("\nratios")
    print(f"  wall time   engine / bare            {engine['seconds'] / bare['seconds']:.3f}x"
          "   (goal <= 1.15)")
    engine_cpu = min(r["cpu"] for r in engine_runs)
    bare_cpu = min(r["cpu"] for r in bare_runs)
    print(f"  CPU time    engine / bare            {engine_cpu / bare_cpu:.3f}x   "
          f"({engine_cpu:.1f}s vs {bare_cpu:.1f}s; parent and child together)")
    print(f"  peak memory engine / bare            {engine_peak / bare_peak:.3f}x   (goal <= 1.2)")
    print(f"  merges/s    engine merge phase / python  {engine_rate / python['merges_per_second']:,.0f}x"
          f"   ({engine_rate:,.0f} vs {python['merges_per_second']:.2f} merges/s; goal >= 100)")
    print(f"  merges/s    engine (whole stage) / python  {stage_rate / python['merges_per_second']:,.0f}x"
          f"   (merges over the stage's wall time, word counting included)")
    print(f"  (engine: word counting took {engine['word_count_seconds']:.1f}s of the stage)")


if __name__ == "__main__":
    main()
