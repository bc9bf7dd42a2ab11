"""An earlier run in a run directory: found before a new (not resumed) start would displace it
(``earlier_run``), and moved aside into ``previous/<UTC time>/`` (``move_aside``, for
``--fresh`` and the app's "start fresh"), never overwritten; its tokenizer and encoded data are
copied back for the new run to reuse."""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

from engine import atomic, runs

# the files a new run would replace or prune are checkpoints (runs.RESULT_SUFFIX): their presence
# means an earlier run lives here. Tokenizer and encoded data are reused by design: they do not
# count, and they are copied back after a move
REUSABLE = ("tokenizer.json", "tokenizer.meta.json", "data")


def earlier_run(run_dir: Path | str) -> runs.RunSummary | None:
    """The run a new (not resumed) start in ``run_dir`` would displace: one that left
    checkpoints there. A directory with only a tokenizer and encoded data (``--until encode``)
    holds nothing a new run would replace: those are reused."""
    run_dir = Path(run_dir)
    try:
        has_results = any(p.suffix == runs.RESULT_SUFFIX for p in run_dir.iterdir())
    except OSError:
        return None
    return runs.summarize(run_dir, own_lock=False) if has_results else None


def move_aside(run_dir: Path | str, keep: tuple[str, ...] = ()) -> Path:
    """Move the run in ``run_dir`` into ``run_dir/previous/<UTC time>/``; returns that path.

    The tokenizer and encoded data are copied back (hard links where possible) so the new run
    can reuse them. ``keep`` names entries that stay (the new run's own lock). Refuses while a
    live run owns the directory.
    """
    run_dir = Path(run_dir)
    owner = runs.live_owner(run_dir)
    if owner is not None and owner.get("pid") != os.getpid():
        raise runs.RunDirBusy(runs.busy_message(run_dir, owner))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H-%M-%SZ")
    target = run_dir / runs.PREVIOUS / stamp
    n = 1
    while target.exists():
        n += 1
        target = run_dir / runs.PREVIOUS / f"{stamp}-{n}"
    target.mkdir(parents=True)
    for entry in sorted(run_dir.iterdir()):
        if entry.name in (runs.PREVIOUS, *keep):
            continue
        os.replace(entry, target / entry.name)
    for name in REUSABLE:
        moved = target / name
        if moved.is_dir():
            shutil.copytree(moved, run_dir / name, copy_function=_link_or_copy)
        elif moved.is_file():
            _link_or_copy(moved, run_dir / name)
    atomic.fsync_dir(run_dir)
    runs.forget_history(run_dir)
    return target


def _link_or_copy(source: Path | str, target: Path | str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
