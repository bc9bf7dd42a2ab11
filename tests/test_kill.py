"""kill -9 at random moments, including during checkpoint writes, then --resume last: every
checkpoint still loads, the run finishes, and its losses and weights equal an uninterrupted
run's. A short version of benchmarks/kill_run.py (which runs 24 kills on the sample preset)."""

from __future__ import annotations

import sys
from pathlib import Path

from tiny_runs import tiny_config

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from kill_run import kill_test  # noqa: E402


def test_kill_9_at_random_moments_loses_nothing_but_the_last_updates(tmp_path):
    preset = tmp_path / "tiny.toml"
    preset.write_text(tiny_config(training__epochs=12).to_toml(), encoding="utf-8")
    # a save every ~0.1 s of training: several per epoch of the tiny run; 12 epochs, so that on
    # a quiet machine too the run outlasts its 6 kills
    report = kill_test(str(preset), tmp_path, ["training.save_every_minutes=0.002"], kills=6,
                       seed=3, max_delay=0.4, log=print)
    assert len(report.kills) == 6  # each kill came before the run could finish
    assert all(k.checkpoints_loaded >= 1 for k in report.kills)  # and all of them load
    assert [k.moment for k in report.kills].count("writing") == 3
    assert report.same_summaries and report.epochs == 12
    assert report.same_weights
