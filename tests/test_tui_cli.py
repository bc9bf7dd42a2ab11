"""transformer-tui's command line, run as a person (or a script without a terminal) runs it: bad
arguments end at once with one line and exit code 2, before the app takes the screen."""

from __future__ import annotations

import os
import subprocess
import sys
import time
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


def test_without_a_terminal_it_exits_2_at_once_and_names_the_headless_command(tmp_path):
    # as in a cron job or `ssh host transformer-tui` without -t: no terminal anywhere
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "tui.cli"], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    assert done.returncode == 2
    assert time.monotonic() - started < 30  # at once, not after a timeout of its own
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("transformer-tui: needs a terminal")
    assert "transformer-train" in lines[0]
    assert done.stdout == ""  # no escape codes of a screen drawn for nobody
    assert list(tmp_path.iterdir()) == []


def test_attach_to_a_folder_without_a_run_and_a_run_dir_that_is_a_file_exit_2(tmp_path):
    plain = tmp_path / "photos"
    plain.mkdir()
    (plain / "cat.jpg").write_bytes(b"jpeg")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a directory")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    attach = transformer_tui("--attach", str(plain), cwd=tmp_path)
    assert attach.returncode == 2
    assert attach.stderr.strip() == (
        f"transformer-tui: --attach {plain}: not a run directory (no events.jsonl or run.lock "
        "there); give the directory a run writes, or run transformer-tui to list the runs")
    run_dir = transformer_tui("--run-dir", str(a_file), cwd=tmp_path)
    assert run_dir.returncode == 2
    lines = run_dir.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0] == (
        f"transformer-tui: run directory {a_file}: is a file, not a directory (give a "
        "directory; a missing one is created)")
    assert attach.stdout == run_dir.stdout == ""
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing made
    assert a_file.read_text() == "not a directory"


def test_attach_takes_a_directory_a_run_wrote(tmp_path):
    from tui.cli import check_args

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert check_args(parse_args(["--attach", str(run_dir)])) is not None
    (run_dir / "events.jsonl").write_text("")  # what a run writes first
    assert check_args(parse_args(["--attach", str(run_dir)])) is None


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
