"""What the app reads of a run directory and of the run process it started, beside the events:
who holds the run, the exit status of our child, the last line of run.log, max_tokens."""

from __future__ import annotations

import os
from pathlib import Path

from engine.runs import RunSummary


def who_holds(summary: RunSummary) -> str:
    """"pid 123 on host" (and the number of processes under torchrun), or "" without a lock."""
    if summary.pid is None:
        return ""
    processes = f", {summary.processes} processes" if summary.processes > 1 else ""
    return f"pid {summary.pid} on {summary.host}{processes}" if summary.host else \
        f"pid {summary.pid}{processes}"


def reap_child(pid: int) -> int | None:
    """The exit status of our child ``pid`` once it has ended (reaping it, so that it does
    not linger as a zombie that looks alive); None while it runs or if it is not ours."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status) if done else None


def last_line(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 4096))
            lines = f.read().decode("utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def config_max_tokens(path: Path) -> int | None:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        return int(tomllib.loads(path.read_text(encoding="utf-8"))["training"]["max_tokens"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
