"""Fit: the largest ``training.max_tokens`` whose worst batches fit in memory, by measurement.

People tune ``max_tokens`` against out-of-memory errors by trial and error: the run dies hours in,
on the epoch's longest batch or in validation beam search. Equal token counts differ several-fold
in memory (attention grows with length squared), so a batch-size finder that halves on OOM, or
one that ignores sequence length and validation, recommends sizes that fail later. Here:

- the worst batches the config can produce at a given ``max_tokens``: the longest sentences
  ``model.max_len`` admits, at the shapes bucketing makes (few long rows; many short rows), all
  positions real (every one reaches the output layer), run through forward, backward and the
  optimizer step;
- then, in the same process as in a run, validation beam search at ``eval.beam`` on sentences
  of ``model.max_len`` tokens, as many as validation puts in a batch at that ``max_tokens``
  (``engine.decode.beam_sentences``; an untrained model decodes each to its length limit: the
  worst case);
- each measurement in a fresh child process (engine/fit_probe.py), so peaks do not
  mix: on CUDA the caching allocator's peak (``max_memory_allocated``), on the CPU the child's
  peak resident memory;
- a search (``search_max_tokens``) for the largest ``max_tokens`` whose peak stays under the
  budget minus a margin: a line through the measured points predicts the limit, each prediction
  is measured, a bracket of fitting / failing sizes shrinks until it is narrow.

The result (``FitResult``) is saved as ``fit.json`` in the run directory; ``training.max_tokens =
"auto"`` reuses it when it matches the config and device, else fits anew (``resolve_auto``).
``preflight_worst_case`` checks a run's own hungriest batch before its first epoch.

    transformer-train fit [--preset NAME] [--set k=v ...] [--device auto|cpu|cuda] [--run-dir DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from engine import atomic
from engine.errors import ConfigError, EngineError
from engine.fit_probe import measure_in_child

if TYPE_CHECKING:
    from engine.config import RunConfig

FIT_FILE = "fit.json"
FIT_VERSION = 3
MARGIN = 0.10  # of the budget: what the training process holds besides a step (data, caches)
GRANULARITY = 64  # max_tokens are recommended in multiples of this
CLOSE_ENOUGH = 0.03  # stop when the bracket (or the peak's distance to the limit) is this close
GIB = 2 ** 30


class NothingFits(EngineError):
    """Even the smallest batch (with its validation beam search) needs more than the budget."""


@dataclass
class FitPoint:
    max_tokens: int
    peak_bytes: int | None  # None: out of memory
    fits: bool


@dataclass
class FitResult:
    device: str  # "cpu" or the GPU's name
    budget_bytes: int
    margin_bytes: int
    max_tokens: int  # the recommendation
    predicted_peak_bytes: int  # measured at the recommendation
    points: list[FitPoint]
    target_tokens: int | None  # the effective batch to keep (tokens per update), if known
    update_freq: dict[int, int] = field(default_factory=dict)  # processes -> update_freq
    key: dict[str, Any] = field(default_factory=dict)  # what the fit depends on (reuse check)
    seconds: float = 0.0

    @property
    def limit_bytes(self) -> int:
        return self.budget_bytes - self.margin_bytes

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["update_freq"] = {str(k): v for k, v in self.update_freq.items()}
        return json.dumps(data, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "FitResult":
        data = json.loads(text)
        data["points"] = [FitPoint(**p) for p in data["points"]]
        data["update_freq"] = {int(k): v for k, v in data["update_freq"].items()}
        return cls(**data)

    def lines(self) -> list[str]:
        """The whole report: budget, measured points, recommendation."""
        out = [_budget_line(self.device, self.budget_bytes, self.margin_bytes)]
        for p in self.points:
            peak = "out of memory" if p.peak_bytes is None else f"{p.peak_bytes / GIB:.3f} GiB"
            out.append(f"  max_tokens {p.max_tokens:>7,}: peak {peak}"
                       f"{'' if p.fits else '  (over the limit)'}")
        return out + self.recommendation()

    def recommendation(self) -> list[str]:
        out = [f"recommended: training.max_tokens = {self.max_tokens} "
               f"(predicted peak {self.predicted_peak_bytes / GIB:.3f} GiB)"]
        if self.target_tokens and self.update_freq:
            freq = ", ".join(f"{n} process{'es' if n > 1 else ''}: {f}"
                             for n, f in self.update_freq.items())
            out.append(f"update_freq for {self.target_tokens:,} tokens per update: {freq}")
        return out


def _budget_line(device: str, budget: int, margin: int) -> str:
    return (f"fit on {device}: budget {budget / GIB:.2f} GiB, minus a {margin / GIB:.2f} GiB "
            f"margin = limit {(budget - margin) / GIB:.2f} GiB")


# --- the search (pure: takes any measure function) -------------------------------------------


def _round_down(value: float, granularity: int) -> int:
    return int(value // granularity * granularity)


def search_max_tokens(measure: Callable[[int], int | None], limit: int, lowest: int, start: int,
                      highest: int = 1 << 20, granularity: int = GRANULARITY,
                      probes: int = 8) -> tuple[int, list[FitPoint]]:
    """The largest measured ``max_tokens`` in [lowest, highest] whose peak (``measure``, bytes;
    None = out of memory) is <= ``limit``, and every point measured.

    Peak memory grows about linearly with max_tokens at fixed shapes, so a line through the two
    largest measured points predicts where the peak meets the limit; each prediction is
    measured and narrows the bracket (largest fitting, smallest failing); a prediction outside
    the bracket falls back to its middle. Stops when the bracket or the best point's distance to
    the limit is within CLOSE_ENOUGH, or after ``probes`` measurements.
    """
    peaks: dict[int, int | None] = {}

    def fits(m: int) -> bool:
        if m not in peaks:
            peaks[m] = measure(m)
        peak = peaks[m]
        return peak is not None and peak <= limit

    if not fits(lowest):
        raise NothingFits(_nothing_fits_text(lowest, peaks[lowest], limit))
    good, bad = lowest, None
    candidate = min(max(_round_down(start, granularity), lowest), highest)
    while len(peaks) < probes:
        if candidate in peaks or candidate <= good or (bad is not None and candidate >= bad):
            break
        if fits(candidate):
            good = candidate
        else:
            bad = candidate
        ceiling = highest if bad is None else bad
        if ceiling - good <= max(granularity, CLOSE_ENOUGH * good):
            break
        if limit - (peaks[good] or 0) <= CLOSE_ENOUGH * limit:
            break
        candidate = _next_candidate(peaks, limit, good, bad, highest, granularity)
    points = [FitPoint(m, peaks[m], peaks[m] is not None and peaks[m] <= limit)
              for m in sorted(peaks)]
    return good, points


def _next_candidate(peaks: dict[int, int | None], limit: int, good: int, bad: int | None,
                    highest: int, granularity: int) -> int:
    known = sorted((m, p) for m, p in peaks.items() if p is not None)
    ceiling = highest if bad is None else bad
    guess = None
    if len(known) >= 2:
        (m1, p1), (m2, p2) = known[-2], known[-1]
        if bad is not None:  # the two measured points around the limit, if both have peaks
            below = [(m, p) for m, p in known if p <= limit]
            above = [(m, p) for m, p in known if p > limit]
            if below and above:
                (m1, p1), (m2, p2) = below[-1], above[0]
        slope = (p2 - p1) / (m2 - m1) if m2 != m1 else 0.0
        if slope > 0:
            guess = m2 + (limit * (1 - CLOSE_ENOUGH / 2) - p2) / slope  # aim just under
    if guess is None:
        guess = good * 2 if bad is None else (good + ceiling) / 2
    candidate = _round_down(guess, granularity)
    if not good < candidate < ceiling:  # outside the bracket: bisect it
        candidate = _round_down((good + min(ceiling, good * 4)) / 2, granularity)
    return min(candidate, highest)


def _nothing_fits_text(max_tokens: int, peak: int | None, limit: int) -> str:
    needed = "runs out of memory" if peak is None else f"needs {peak / GIB:.2f} GiB"
    return (f"even the smallest batch the config allows (max_tokens {max_tokens}, one sentence of "
            f"model.max_len tokens, and its validation beam search) {needed}, over the limit of "
            f"{limit / GIB:.2f} GiB: lower model.max_len or the model size, or raise "
            "training.memory_budget")


# --- fit -------------------------------------------------------------------------------------


def memory_budget(config: RunConfig, device: Any) -> int:
    """Bytes training may use: training.memory_budget GiB, or 0 = the whole GPU / all RAM."""
    if config.training.memory_budget:
        return int(config.training.memory_budget * GIB)
    if device.type == "cuda":
        import torch

        return int(torch.cuda.get_device_properties(device).total_memory)
    import psutil

    return int(psutil.virtual_memory().total)


def target_tokens(config: RunConfig) -> int | None:
    """Tokens per optimizer update the preset aims at: max_tokens x update_freq when max_tokens
    is a number (full: 25,000 x 1); unknown for "auto"."""
    t = config.training
    return t.max_tokens * t.update_freq if isinstance(t.max_tokens, int) else None


def update_freqs(target: int | None, max_tokens: int, processes: int) -> dict[int, int]:
    """update_freq keeping ``target`` tokens per update with 1..processes processes."""
    if not target:
        return {}
    return {n: max(1, math.ceil(target / (max_tokens * n))) for n in range(1, processes + 1)}


def fit_key(config: RunConfig, device_name: str, precision: str, budget: int) -> dict[str, Any]:
    """What a fit depends on: a fit.json with another key is measured anew."""
    import torch

    ev = config.eval
    return {"version": FIT_VERSION, "model": dataclasses.asdict(config.model),
            "vocab_size": config.tokenizer.vocab_size, "shared": config.tokenizer.shared,
            "precision": precision, "device": device_name, "budget_bytes": budget,
            "beam": ev.beam if ev.bleu_every else 0, "bleu_samples": ev.bleu_samples,
            "max_len_offset": ev.max_len_offset, "torch": torch.__version__}


def fit(config: RunConfig, device: str = "auto", processes: int = 1,
        report: Callable[[str], None] | None = None,
        measure: Callable[[int], int | None] | None = None) -> FitResult:
    """Measure and recommend ``max_tokens`` for ``config`` on ``device`` ("auto", "cpu",
    "cuda", "cuda:1"); ``report`` gets a line per measured point. ``measure(max_tokens)``
    replaces the child-process probe (tests)."""
    import torch

    from engine.device import pick_device, resolve_precision

    started = time.monotonic()
    chosen = torch.device(device) if ":" in device else pick_device(device)
    precision, _ = resolve_precision(config.training.precision, chosen)
    name = torch.cuda.get_device_name(chosen) if chosen.type == "cuda" else "cpu"
    budget = memory_budget(config, chosen)
    margin = int(budget * MARGIN)
    limit = budget - margin
    say = report or (lambda text: None)
    probe = measure or (lambda m: measure_in_child(config, str(chosen), m))
    say(_budget_line(name, budget, margin))

    def measure_train(max_tokens: int) -> int | None:
        peak = probe(max_tokens)
        shown = "out of memory" if peak is None else f"{peak / GIB:.3f} GiB"
        say(f"  max_tokens {max_tokens:>7,}: peak {shown}")  # steps and beam search
        return peak

    lowest = config.model.max_len  # one sentence of the longest length: batching's minimum
    start = config.training.max_tokens if isinstance(config.training.max_tokens, int) else 4096
    best, points = search_max_tokens(measure_train, limit, lowest, max(start, lowest * 2))
    target = target_tokens(config)
    return FitResult(
        device=name, budget_bytes=budget, margin_bytes=margin, max_tokens=best,
        predicted_peak_bytes=next(p.peak_bytes for p in points if p.max_tokens == best) or 0,
        points=points, target_tokens=target,
        update_freq=update_freqs(target, best, processes),
        key=fit_key(config, name, precision, budget), seconds=round(time.monotonic() - started, 1))


def load_fit(run_dir: Path) -> FitResult | None:
    path = Path(run_dir) / FIT_FILE
    try:
        return FitResult.from_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent or from another version: fit anew


def save_fit(result: FitResult, run_dir: Path) -> Path:
    path = Path(run_dir) / FIT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, result.to_json())
    return path


def matching_fit(config: RunConfig, run_dir: Path, device: Any) -> FitResult | None:
    """The run directory's fit.json when it was made for this model, budget and device."""
    import torch

    from engine.device import resolve_precision

    precision, _ = resolve_precision(config.training.precision, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = load_fit(run_dir)
    key = fit_key(config, name, precision, memory_budget(config, device))
    return result if result is not None and result.key == key else None


def resolve_auto(config: RunConfig, run_dir: Path, report: Callable[[str], None]) -> RunConfig:
    """``training.max_tokens = "auto"``: the config with the fitted max_tokens (a matching
    fit.json in ``run_dir`` is reused; else the fit runs and is saved there)."""
    from engine.device import pick_device

    result = matching_fit(config, run_dir, pick_device(config.training.device))
    if result is not None:
        report(f"training.max_tokens = \"auto\": {result.max_tokens} from {run_dir / FIT_FILE}")
    else:
        report("training.max_tokens = \"auto\": measuring what fits (transformer-train fit) ...")
        result = fit(config, config.training.device, report=report)
        save_fit(result, run_dir)
        report(f"training.max_tokens = \"auto\": {result.max_tokens} (saved {run_dir / FIT_FILE})")
    training = dataclasses.replace(config.training, max_tokens=result.max_tokens)
    return dataclasses.replace(config, training=training)


# --- preflight of a run's own worst case ------------------------------------------------------


def hungriest_batch(batches: list[Any], src_lengths: Any, tgt_lengths: Any, model_config: Any,
                    vocab: int) -> int:
    """Index of the batch estimated to need the most memory in a training step: activations
    per padded position (both sides, every layer), the logits and their gradient per real
    target token, and attention scores (rows x heads x lengths squared) where a backend
    materialises them. Batches of equal max_tokens differ several-fold in these terms."""
    d, layers = model_config.d_model, model_config.n_layers
    per_position = layers * (12 * d + 2 * model_config.ffn_hidden)
    best, best_cost = 0, -1.0
    for index, rows in enumerate(batches):
        s, t = src_lengths[rows], tgt_lengths[rows]
        n, S, T = len(rows), int(s.max()), int(t.max())
        cost = (n * (S + T) * per_position + float(t.sum()) * 2 * vocab
                + n * model_config.n_head * layers * (S * S + T * T + S * T))
        if cost > best_cost:
            best, best_cost = index, cost
    return best


def max_tokens_that_fits(max_tokens: int, peak: int | None, held: int, fixed: int, budget: int,
                         lowest: int) -> int | None:
    """Scale ``max_tokens`` so that its step's memory (``peak`` minus what was ``held`` before
    and the ``fixed`` part, e.g. optimizer state) fits the budget minus the margin; None when
    not even ``lowest`` would. An estimate (``transformer-train fit`` measures)."""
    room = budget * (1 - MARGIN) - held - fixed
    if peak is None:  # out of memory: at least halve
        return _round_down(max_tokens / 2, GRANULARITY) if max_tokens / 2 >= lowest else None
    scaled = max(peak - held - fixed, 1)
    fits = _round_down(max_tokens * room / scaled, GRANULARITY)
    return fits if fits >= lowest else None


def preflight_failure(what: str, peak: int | None, budget: int, budget_source: str,
                      max_tokens: int, remedy: str) -> str:
    """The one line a run that would run out of memory stops with."""
    needed = "runs out of memory" if peak is None else f"needs {peak / GIB:.2f} GiB"
    return (f"out of memory ahead: {what} {needed} with training.max_tokens = {max_tokens}, "
            f"over the {budget / GIB:.2f} GiB budget ({budget_source}); {remedy}")


def max_tokens_remedy(fits: int | None, fitted: FitResult | None) -> str:
    if fitted is not None:
        return f"training.max_tokens = {fitted.max_tokens} fits (measured, {FIT_FILE})"
    if fits is None:
        return ("no max_tokens fits: lower model.max_len or the model size, or raise "
                "training.memory_budget")
    return f"training.max_tokens = {fits} fits (estimated; transformer-train fit measures it)"


# --- transformer-train fit -------------------------------------------------------------------


def fit_parser() -> argparse.ArgumentParser:
    from engine.config import PRESET_NAMES

    parser = argparse.ArgumentParser(
        prog="transformer-train fit",
        description="Measure the peak memory of the worst batches and of validation beam search "
                    "and recommend the largest training.max_tokens that fits; saves fit.json.")
    parser.add_argument("--preset", default="sample",
                        help=f"{', '.join(PRESET_NAMES)}, or the path of a .toml file")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override one config key (repeatable)")
    parser.add_argument("--device", default=None,
                        help="auto, cpu, cuda or cuda:N (default: training.device)")
    parser.add_argument("--processes", type=int, default=0,
                        help="report update_freq for 1..N processes (default: the GPUs, or 1)")
    parser.add_argument("--run-dir", type=Path, help="where fit.json goes (default: saved/<preset>)")
    return parser


def fit_main(argv: list[str]) -> int:
    from engine.config import load_config
    from engine.paths import default_run_dir

    args = fit_parser().parse_args(argv)
    config = load_config(args.preset, args.overrides)  # ConfigError: one line, exit 2 (cli)
    device = args.device or config.training.device
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"--device {device!r}: use auto, cpu, cuda or cuda:N")
    processes = args.processes
    if processes <= 0:
        import torch

        processes = max(1, torch.cuda.device_count()) if device != "cpu" else 1
    run_dir = args.run_dir or default_run_dir(config.name)
    try:
        result = fit(config, device, processes, report=lambda text: print(text, flush=True))
    except NothingFits as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(result.recommendation()))
    print(f"saved {save_fit(result, run_dir)} ({result.seconds:.0f} s)")
    return 0

