"""Where runs live: the ``saved/`` folder (relative to the working directory) and a run's
default directory in it. A leaf module: the command line, ``fit`` and the run list use it."""

from __future__ import annotations

from pathlib import Path

RUNS_ROOT = Path("saved")


def default_run_dir(config_name: str) -> Path:
    """saved/<config name>: where a run goes when no --run-dir is given."""
    return RUNS_ROOT / config_name
