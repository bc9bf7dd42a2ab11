"""`transformer-train` as a user runs it: a real child process, its output and its run dir."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

MULTI30K = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "multi30k"


def train(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def events_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def test_sample_preset_until_data_reports_the_stage_and_writes_the_run_dir(tmp_path):
    result = train("--preset", "sample", "--until", "data", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "== Stage 1/1: data" in result.stdout
    assert "data done" in result.stdout and "train: 6,000" in result.stdout
    run_dir = tmp_path / "saved" / "sample"
    assert "[training]" in (run_dir / "config.toml").read_text()
    kinds = [e["event"] for e in events_of(run_dir)]
    assert kinds[:3] == ["RunStarted", "Preflight", "StageStarted"]
    finished = kinds.index("StageFinished")
    assert set(kinds[3:finished]) == {"DataProgress"}  # the pairs read, split by split
    assert kinds[-1] == "RunFinished"


def test_quick_preset_offline_fails_fast_with_a_clear_error(tmp_path):
    result = train("--preset", "quick", "--until", "data", cwd=tmp_path, timeout=60)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    failure = [line for line in output.splitlines() if line.startswith("FAILED")]
    assert len(failure) == 1 and "WMT14" in failure[0]
    assert "sample" in failure[0] and "local" in failure[0]


def test_bad_preset_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[training]\nmax_tokens = -1\n")
    result = train("--preset", str(bad), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "max_tokens" in result.stderr and "-1" in result.stderr
    assert not (tmp_path / "saved").exists()  # nothing written for a run that never started


def test_unknown_stage_for_until(tmp_path):
    result = train("--until", "tokeniser", cwd=tmp_path)
    assert result.returncode == 2 and "unknown stage" in result.stderr


@pytest.mark.skipif(not MULTI30K.is_dir(), reason="../shared/data/multi30k is not present")
def test_local_multi30k_files_load_29000_1014_1000(tmp_path):
    files = {
        "train_src": "train.en.gz", "train_tgt": "train.de.gz",
        "valid_src": "val.en.gz", "valid_tgt": "val.de.gz",
        "test_src": "test_2016_flickr.en.gz", "test_tgt": "test_2016_flickr.de.gz",
    }
    sets = [f"--set=data.{key}={MULTI30K.resolve() / name}" for key, name in files.items()]
    result = train("--preset", "sample", "--set", "data.source=local", "--set", "data.train_size=0",
                   "--set", "data.valid_size=0", "--set", "data.test_size=0", *sets,
                   "--until", "data", "--run-dir", str(tmp_path / "m30k"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    finished = [e for e in events_of(tmp_path / "m30k") if e["event"] == "StageFinished"][0]
    assert (finished["info"]["train"], finished["info"]["valid"], finished["info"]["test"]) == \
        (29000, 1014, 1000)


# --- status: the exit status says the state (running, paused, stopped, dead: tests/test_runs.py)


def test_status_exit_codes_for_finished_failed_and_no_run_are_the_documented_ones(tmp_path):
    import torch

    from engine.cli import STATUS_HELP

    finished, failed = tmp_path / "finished", tmp_path / "failed"
    done = train("--preset", "sample", "--until", "data", "--run-dir", str(finished), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert train("--preset", "quick", "--until", "data", "--run-dir", str(failed),
                 cwd=tmp_path, timeout=60).returncode == 1  # offline: WMT14 unreachable
    empty, missing, a_file = tmp_path / "empty", tmp_path / "missing", tmp_path / "notes.txt"
    empty.mkdir()
    a_file.write_text("x")

    # what ran is in the run's first event and on its status line
    versions = events_of(finished)[0]["versions"]
    assert versions["torch"] == torch.__version__ and versions["device"]
    status = train("status", str(finished), cwd=tmp_path)
    assert status.returncode == 0 and status.stderr == ""
    assert status.stdout.startswith(f"{finished}  finished  ") and status.stdout.count("\n") == 1
    assert status.stdout.rstrip().endswith(f"torch {torch.__version__}, {versions['device']}")

    assert train("status", str(failed), cwd=tmp_path).returncode == 5
    for path, why in ((empty, "no run there (a run directory holds events.jsonl or run.lock)"),
                      (missing, "no such directory"),
                      (a_file, "no run there (a run directory holds events.jsonl or run.lock)")):
        refused = train("status", str(path), cwd=tmp_path)
        assert refused.returncode == 2 and refused.stdout == ""
        assert refused.stderr == f"error: {path}: {why}\n"
    # several: 2 if one holds no run, else the highest
    assert train("status", str(finished), str(failed), cwd=tmp_path).returncode == 5
    assert train("status", str(failed), str(empty), cwd=tmp_path).returncode == 2
    assert train("status", cwd=tmp_path).returncode == 0  # the list of saved/ (none here)
    assert not missing.exists() and list(empty.iterdir()) == [] and a_file.read_text() == "x"

    # the codes are in --help, the subcommand's and the training command's
    helped = train("status", "--help", cwd=tmp_path).stdout
    assert " ".join(STATUS_HELP.split()) in " ".join(helped.split())
    for words in ("0 finished", "3 live", "4 stopped", "5 failed"):
        assert words in STATUS_HELP
    assert "transformer-train status DIR" in " ".join(
        train("--help", cwd=tmp_path).stdout.split())
