"""transformer-tui's command line, run as a person (or a script without a terminal) runs it: bad
arguments end at once with one line and exit code 2, before the app takes the screen."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tui.cli import parse_args

ROOT = Path(__file__).resolve().parents[1]


def transformer_tui(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "tui.cli", *args], cwd=cwd, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args, said", [
    (["--preset", "nosuch"], "nosuch"),
    (["--attach", "/nonexistent"], "--attach /nonexistent: no such run directory"),
    (["--set", "training.epochs=zero"], "[training] epochs = 'zero': must be an integer"),
])
def test_bad_arguments_without_a_terminal_exit_2_with_one_line(tmp_path, args, said):
    done = transformer_tui(*args, cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("transformer-tui: ") and said in lines[0]
    assert done.stdout == ""
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_the_command_line_takes_presets_overrides_and_attach():
    args = parse_args(["--preset", "quick", "--set", "training.epochs=1", "--set",
                       "data.train_size=10", "--start", "--run-dir", "out"])
    assert (args.preset, args.overrides, args.start, args.run_dir) == (
        "quick", ["training.epochs=1", "data.train_size=10"], True, "out")
    assert parse_args(["--attach", "saved/sample"]).attach == "saved/sample"
    with pytest.raises(SystemExit):
        parse_args(["--attach", "saved/sample", "--start"])
    # no choice of what to run or follow: the list of runs
    assert parse_args([]).show_runs and parse_args(["--runs-dir", "elsewhere"]).show_runs
    assert not parse_args(["--preset", "sample"]).show_runs
