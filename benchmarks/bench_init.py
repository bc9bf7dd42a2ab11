"""Embedding initialisation: N(0, d_model^-0.5) with a zero pad row (tensor2tensor, fairseq; the
engine's) against Xavier-uniform (the engine's before), same preset, seed and budget.

Two real headless runs of the ``small`` preset on Multi30k (``../shared/data/multi30k``), each
in its own process; the Xavier one is the engine with ``Transformer.__init__`` re-drawing the
embedding matrix (shared with the output layer) with ``xavier_uniform_`` after the engine's own
init. Reported: validation BLEU at each BLEU epoch, test2016 BLEU of the averaged model (both
kinds), wall and CPU minutes (the kernel's count for each child, ``wait4``), peak resident
memory. ``--parallel`` runs both at once, one thread each (the BLEU is the point; then wall
times compare only with each other).

    python benchmarks/bench_init.py [--data DIR] [--preset small] [--parallel] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MULTI30K = ROOT.parent / "shared" / "data" / "multi30k"
VARIANTS = ("normal", "xavier")


def data_overrides(data: Path) -> list[str]:
    files = {"train_src": "train.en.gz", "train_tgt": "train.de.gz", "valid_src": "val.en.gz",
             "valid_tgt": "val.de.gz", "test_src": "test_2016_flickr.en.gz",
             "test_tgt": "test_2016_flickr.de.gz"}
    return [f"data.{key}={data / name}" for key, name in files.items()]


def child(variant: str, argv: list[str]) -> int:
    """In the child: the engine's CLI, with the Xavier embeddings patched in when asked."""
    sys.path.insert(0, str(ROOT))
    from engine.cli import main

    if variant == "xavier":
        from torch import nn

        from engine.model import Transformer

        engine_init = Transformer.__init__

        def xavier_embeddings(self, *args, **kwargs) -> None:
            engine_init(self, *args, **kwargs)
            for embedding in {id(e): e for e in (self.src_embed, self.tgt_embed)}.values():
                nn.init.xavier_uniform_(embedding.weight)  # no zero pad row, as before

        Transformer.__init__ = xavier_embeddings
    return main(argv)


def start(variant: str, args: argparse.Namespace, run_dir: Path, threads: int | None):
    command = [sys.executable, __file__, "--child", variant, "--preset", args.preset,
               "--run-dir", str(run_dir)]
    for item in data_overrides(args.data) + args.set:
        command += ["--set", item]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    log = open(run_dir.with_suffix(".log"), "w")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def results(run_dir: Path) -> dict:
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    valid = [(e["epoch"], e["bleu"]) for e in events
             if e["event"] == "EpochSummary" and e["bleu"] is not None]
    test = [e for e in events if e["event"] == "TestBleu"]
    return {"valid_bleu": valid, "test": test[-1] if test else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=MULTI30K)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--parallel", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    if not (args.data / "train.en.gz").is_file():
        sys.exit(f"{args.data}: no Multi30k files (train.en.gz ...); give --data DIR")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-init-"))
    work.mkdir(parents=True, exist_ok=True)

    measured = {}
    running = {}
    for variant in VARIANTS:
        run_dir = work / variant
        running[variant] = (start(variant, args, run_dir, 1 if args.parallel else None),
                            time.perf_counter())
        if not args.parallel:
            measured[variant] = wait(*running.pop(variant))
    for variant, (process, started) in running.items():
        measured[variant] = wait(process, started)

    how = "both at once, one thread each" if args.parallel else "one after the other"
    print(f"{args.preset} preset on {args.data}, {how}; runs in {work}")
    for variant in VARIANTS:
        m = measured[variant]
        if m["exit"] != 0:
            print(f"{variant:<7} exit {m['exit']}: see {work / variant}.log")
            continue
        r = results(work / variant)
        test = r["test"]
        print(f"{variant:<7} test sacreBLEU {test['sacrebleu']:.2f}, paper BLEU {test['paper_bleu']:.2f} "
              f"({Path(test['checkpoint']).name}); valid BLEU by epoch "
              + ", ".join(f"{epoch}: {bleu:.2f}" for epoch, bleu in r["valid_bleu"])
              + f"; {m['wall'] / 60:.1f} min wall, {m['cpu'] / 60:.1f} CPU-min, "
              f"peak RSS {m['maxrss'] / 2**30:.2f} GiB")


def wait(process: subprocess.Popen, started: float) -> dict:
    _, status, usage = os.wait4(process.pid, 0)
    return {"exit": os.waitstatus_to_exitcode(status), "wall": time.perf_counter() - started,
            "cpu": usage.ru_utime + usage.ru_stime, "maxrss": usage.ru_maxrss * 1024}


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.exit(child(sys.argv[2], sys.argv[3:]))
    main()
