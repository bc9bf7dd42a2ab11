"""Comparing runs: what ``transformer-train compare`` prints and the app's comparison screen shows.

For each run directory, a ``ComparedRun``: its curves (train loss smoothed as the dashboard
smooths it, validation loss, BLEU; each point with the update it came at and the tokens trained
on by then, so that runs with different ``max_tokens`` compare by tokens), and the table's
numbers (best validation loss and BLEU with their update, test BLEU, tokens/s, wall and CPU time,
state). The table shows, of the runs' configs, only the keys whose values differ between them.

A ``RunReader`` follows one run's events.jsonl (engine/history.py's incremental fold), so a live
run is read again cheaply: only what was appended since. State (dead, stalled...) is
engine/runs.py's judgement. No Textual and no torch here.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import runs
from engine.config import SECTIONS, config_from_dict
from engine.errors import ConfigError, EngineError
from engine.history import HistoryFile, RunHistory, RunState

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

CONFIG = "config.toml"
AXES = {"update": "update", "tokens": "tokens seen"}  # x by ... -> the axis label


@dataclass(frozen=True)
class Points:
    """One curve of a run: y at each point, and the update and tokens seen it came at."""

    steps: list[float] = field(default_factory=list)
    tokens: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def xs(self, axis: str) -> list[float]:
        return self.tokens if axis == "tokens" else self.steps


@dataclass(frozen=True)
class ComparedRun:
    run_dir: Path
    name: str
    preset: str
    state: RunState
    updates: int
    tokens: float  # target tokens trained on so far
    config: dict[str, Any]  # "section.key" -> value, from config.toml ({} without one)
    best_val_loss: tuple[float, int] | None  # (value, update)
    best_bleu: tuple[float, int] | None
    test_bleu: float | None  # sacreBLEU of the test split, once decoded
    tokens_per_second: float | None  # the last progress's (the epoch's average so far)
    wall_seconds: float | None
    cpu_seconds: float | None  # None: the run's engine did not record it yet (older runs)
    train: Points  # the loss smoothed, as the dashboard draws it
    val: Points
    bleu: Points

    @property
    def live(self) -> bool:
        return self.state in runs.LIVE_STATES


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's config.toml as {"section.key": value}, every key there with its default filled
    in (so that a run whose file lacks a key equal to its default compares equal); a file this
    version cannot load (an older or newer key) is taken as written; {} without a readable one."""
    try:
        raw = tomllib.loads((run_dir / CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}
    raw.pop("preset", None)
    try:
        raw = config_from_dict(raw, source=str(run_dir / CONFIG)).to_dict()
    except (ConfigError, TypeError, ValueError):
        pass
    return {f"{section}.{key}": value for section, values in raw.items()
            if section in SECTIONS and isinstance(values, dict) for key, value in values.items()}


def differing_keys(configs: list[dict[str, Any]]) -> list[str]:
    """The keys whose values are not the same in every config (a key a config lacks differs),
    in the order of the config's sections."""
    keys = list(dict.fromkeys(key for config in configs for key in config))
    return [key for key in keys if len({json.dumps(c.get(key), sort_keys=True, default=str)
                                        for c in configs}) > 1]


def _finite(pairs: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(x, y) for x, y in pairs if y is not None and math.isfinite(y)]


def _points(history: RunHistory, pairs: list[tuple[float, float]]) -> Points:
    pairs = _finite(pairs)
    steps = [x for x, _ in pairs]
    return Points(steps, history.tokens_at(steps), [y for _, y in pairs])


def compared_run(run_dir: Path, name: str, state: RunState, history: RunHistory,
                 config: dict[str, Any]) -> ComparedRun:
    """What the comparison shows of one run, copied out of its history (which goes on changing
    while the run lives)."""
    train = history.train_curve.points()
    batch = history.batch
    rate = batch.tokens_per_second if batch is not None else None
    return ComparedRun(
        run_dir=run_dir, name=name, preset=history.preset, state=state, updates=history.step,
        tokens=history.tokens, config=config, best_val_loss=history.best_val_loss,
        best_bleu=history.best_bleu,
        test_bleu=history.test.sacrebleu if history.test is not None else None,
        tokens_per_second=rate if rate is not None and math.isfinite(rate) else None,
        wall_seconds=history.wall_seconds(), cpu_seconds=history.cpu_seconds,
        train=_points(history, list(zip(*train))),
        val=_points(history, history.validation()),
        bleu=_points(history, history.bleu_points()))


class RunReader:
    """Follows one run directory: ``read()`` folds what its events.jsonl gained since the last
    call and says what the run is now (EngineError for a directory that holds no run)."""

    def __init__(self, run_dir: Path | str) -> None:
        self.run_dir = Path(run_dir)
        if not self.run_dir.is_dir():
            raise EngineError(f"{self.run_dir}: no such directory")
        if not runs.is_run_dir(self.run_dir):
            raise EngineError(f"{self.run_dir}: no run there (a run directory holds "
                              f"{runs.EVENTS} or {runs.LOCK})")
        self.file = HistoryFile(self.run_dir / runs.EVENTS)
        self.config = read_config(self.run_dir)
        self.last: ComparedRun | None = None
        self._events = -1  # events folded when ``last`` was made

    def read(self) -> ComparedRun:
        history = self.file.update()
        summary = runs.summarize(self.run_dir, history=history)
        if self.last is None or history.events != self._events or \
                summary.state != self.last.state:
            if not self.config:  # written by the run's first stage
                self.config = read_config(self.run_dir)
            self.last = compared_run(self.run_dir, summary.name, summary.state, history,
                                     self.config)
            self._events = history.events
        return self.last


def compare(run_dirs: list[Path | str]) -> list[ComparedRun]:
    """Each run as it is now, in the order given."""
    readers = [RunReader(run_dir) for run_dir in run_dirs]
    return [reader.read() for reader in readers]


# --- the table -------------------------------------------------------------------------------


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "—"
    hours, rest = divmod(int(round(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes \
        else f"{secs}s"


def short_count(n: float, digits: int = 1) -> str:
    """186.0k, 1.2M: a count in few columns (``digits`` after the point; -1: as few as need)."""
    for limit, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= limit:
            return (f"{n / limit:g}" if digits < 0 else f"{n / limit:.{digits}f}") + unit
    return f"{n:.0f}"


def _at(best: tuple[float, int] | None, digits: int) -> str:
    return "—" if best is None else f"{best[0]:.{digits}f} @{best[1]:,}"


def _value(value: Any) -> str:
    return "—" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def short_keys(keys: list[str]) -> list[str]:
    """A key's name without its section ("max_tokens"), unless two keys share that name."""
    names = [key.rpartition(".")[2] for key in keys]
    return [name if names.count(name) == 1 else key for key, name in zip(keys, names)]


def table(compared: list[ComparedRun]) -> tuple[list[str], list[list[str]]]:
    """The comparison's table: headers, and one row of text per run. What matters most comes
    first (a narrow terminal scrolls the table sideways): the state, what differs, the results,
    then the costs."""
    keys = differing_keys([run.config for run in compared])
    headers = ["run", "state", "preset", *short_keys(keys), "best val loss", "best BLEU",
               "test BLEU", "tok/s", "wall", "CPU", "tokens"]
    rows = [[run.name, run.state.value, run.preset or "—",
             *(_value(run.config.get(key)) for key in keys),
             _at(run.best_val_loss, 3), _at(run.best_bleu, 2),
             "—" if run.test_bleu is None else f"{run.test_bleu:.2f}",
             "—" if run.tokens_per_second is None else f"{run.tokens_per_second:,.0f}",
             duration(run.wall_seconds), duration(run.cpu_seconds), short_count(run.tokens)]
            for run in compared]
    return headers, rows


def table_text(compared: list[ComparedRun]) -> str:
    headers, rows = table(compared)
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in [headers, *rows])


def _best(best: tuple[float, int] | None) -> dict[str, float] | None:
    return None if best is None else {"value": best[0], "update": best[1]}


def as_json(compared: list[ComparedRun]) -> list[dict[str, Any]]:
    """The table's fields, as numbers (None where the table says "—"), config keys in full;
    and the updates so far."""
    keys = differing_keys([run.config for run in compared])
    return [{"run": run.name, "run_dir": str(run.run_dir), "state": run.state.value,
             "preset": run.preset, "config": {key: run.config.get(key) for key in keys},
             "best_val_loss": _best(run.best_val_loss), "best_bleu": _best(run.best_bleu),
             "test_bleu": run.test_bleu, "tokens": round(run.tokens),
             "tokens_per_second": run.tokens_per_second, "wall_seconds": run.wall_seconds,
             "cpu_seconds": run.cpu_seconds, "updates": run.updates}
            for run in compared]


def compare_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="transformer-train compare",
        description="Compare runs side by side: per run the preset, the config keys that differ "
                    "between them, best validation loss and BLEU (with the update they came "
                    "at), test BLEU, updates, tokens seen, tokens/s, wall and CPU time, state.",
        epilog="Exit status: 0; 2 when a DIR holds no run.")
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="DIR", help="run directories")
    parser.add_argument("--json", action="store_true", help="a JSON list, one object per run")
    args = parser.parse_args(argv)
    compared = compare(args.run_dirs)  # EngineError: engine/cli.py says it, exit 2
    if args.json:
        json.dump(as_json(compared), sys.stdout, indent=2, default=str)
        print()
    else:
        print(table_text(compared))
    return 0
