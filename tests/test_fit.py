"""Fit: a person asks which max_tokens fits in memory and gets a measured answer."""

import json

import pytest

from engine.cli import main
from engine.config import config_from_dict
from engine.fit import (
    FIT_FILE,
    GIB,
    FitResult,
    NothingFits,
    load_fit,
    resolve_auto,
    search_max_tokens,
    update_freqs,
)
from engine.fit_probe import measure_in_child, worst_shapes
from tests.tiny_runs import TINY, tiny_config

MiB = 2 ** 20


def linear_memory(base: int, per_token: int, calls: list[int]):
    """A device whose peak grows linearly with max_tokens (as measured peaks do)."""

    def measure(max_tokens: int) -> int:
        calls.append(max_tokens)
        return base + per_token * max_tokens

    return measure


@pytest.mark.parametrize("base,per_token,limit", [
    (300 * MiB, 100_000, int(1.35 * GIB)),  # the CPU case: a large base, a small budget
    (600 * MiB, 40_000, 40 * GIB),  # a big GPU: the answer is far above the first guess
    (200 * MiB, 500_000, 1 * GIB),  # the first guess is already over the limit
])
def test_the_search_finds_the_largest_max_tokens_under_the_limit_in_a_few_probes(
        base, per_token, limit):
    calls: list[int] = []
    best, points = search_max_tokens(linear_memory(base, per_token, calls), limit, lowest=256,
                                     start=4096)
    true_limit = (limit - base) / per_token
    assert base + per_token * best <= limit  # it fits
    assert best >= 0.95 * true_limit - 64  # and is close to the largest that does
    assert len(calls) <= 8 and len(set(calls)) == len(calls)  # each size measured once
    assert [p.max_tokens for p in points] == sorted(set(calls))
    assert all(p.fits == (p.peak_bytes <= limit) for p in points)
    assert best % 64 == 0


def test_out_of_memory_points_narrow_the_search_too():
    calls: list[int] = []

    def measure(max_tokens: int) -> int | None:  # a device that dies above 10,000 tokens
        calls.append(max_tokens)
        return None if max_tokens > 10_000 else 100 * MiB + 10_000 * max_tokens

    best, points = search_max_tokens(measure, limit=10 * GIB, lowest=256, start=4096)
    assert 9_000 <= best <= 10_000
    assert any(p.peak_bytes is None and not p.fits for p in points)


def test_when_even_one_sentence_does_not_fit_the_answer_says_what_to_change():
    with pytest.raises(NothingFits, match="model.max_len"):
        search_max_tokens(lambda m: 2 * GIB, limit=GIB, lowest=256, start=4096)


def test_the_worst_batches_are_many_short_rows_and_few_rows_of_the_longest_sentences():
    shapes = worst_shapes(8192, 256)
    assert shapes[:3] == [(512, 16), (128, 64), (32, 256)]
    assert shapes == shapes[:3] * (len(shapes) // 3)  # again and again, as shapes change in a run
    assert update_freqs(25_000, 6_000, 4) == {1: 5, 2: 3, 3: 2, 4: 2}


def test_the_fit_command_measures_child_processes_recommends_what_fits_and_saves_fit_json(
        tmp_path, capsys):
    preset = tmp_path / "tiny.toml"
    preset.write_text("\n".join(
        [f"[{section}]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items())
         for section, values in TINY.items()]))
    status = main(["fit", "--preset", str(preset), "--device", "cpu", "--run-dir",
                   str(tmp_path / "run"), "--set", "training.memory_budget=0.75"])
    out = capsys.readouterr().out
    assert status == 0
    saved = load_fit(tmp_path / "run")
    assert saved is not None
    assert f"recommended: training.max_tokens = {saved.max_tokens}" in out
    assert "update_freq for 500 tokens per update: 1 process: 1" in out
    assert saved.device == "cpu" and saved.budget_bytes == int(0.75 * GIB)
    assert saved.predicted_peak_bytes <= saved.limit_bytes
    assert saved.max_tokens == max(p.max_tokens for p in saved.points if p.fits)
    assert out.count("  max_tokens") == len(saved.points)  # each point shown as it is measured
    # no guess: a fresh measurement at the recommendation stays under the budget
    config = tiny_config(training__memory_budget=0.75)
    peak = measure_in_child(config, "cpu", saved.max_tokens)
    assert peak is not None and peak <= saved.budget_bytes


def test_max_tokens_auto_reuses_a_matching_fit_and_refits_when_the_model_changes(tmp_path):
    config = tiny_config(training__max_tokens="auto", training__memory_budget=0.75)
    calls: list[str] = []
    made = FitResult(device="cpu", budget_bytes=int(0.75 * GIB), margin_bytes=0, max_tokens=960,
                     predicted_peak_bytes=1, points=[], target_tokens=None)
    from engine import fit as fit_module

    def fake_fit(config, device, processes=1, report=None, measure=None):
        calls.append(device)
        result = FitResult(**{**made.__dict__})
        name = "cpu"
        import torch

        from engine.device import resolve_precision

        precision, _ = resolve_precision(config.training.precision, torch.device("cpu"))
        result.key = fit_module.fit_key(config, name, precision, result.budget_bytes)
        return result

    original = fit_module.fit
    fit_module.fit = fake_fit
    try:
        resolved = resolve_auto(config, tmp_path, lambda text: None)
        assert resolved.training.max_tokens == 960 and (tmp_path / FIT_FILE).is_file()
        assert resolve_auto(config, tmp_path, lambda t: None).training.max_tokens == 960
        assert len(calls) == 1  # the second run reused fit.json
        wider = config_from_dict({**config.to_dict(),
                                  "model": {**config.to_dict()["model"], "d_model": 64}})
        resolve_auto(wider, tmp_path, lambda text: None)
        assert len(calls) == 2  # another model: measured anew
    finally:
        fit_module.fit = original


# --- the preflight of a run's own worst case ---------------------------------------------------


def test_the_preflight_step_leaves_the_run_exactly_as_it_would_be_without_it(tmp_path,
                                                                             monkeypatch):
    from engine.control import RunControl
    from engine.events import BatchProgress, MemorySample, Notice
    from engine.pipeline import run
    from engine.train import loop as train_loop

    def losses(run_dir, config):
        events = []
        assert run(config, run_dir, events.append, RunControl()) == "finished"
        return [(p.step, p.loss) for p in events if isinstance(p, BatchProgress)], events

    monkeypatch.setattr(train_loop, "PROGRESS_SECONDS", 0.0)  # every batch's loss

    plain, _ = losses(tmp_path / "plain", tiny_config())
    checked, events = losses(tmp_path / "checked", tiny_config(training__memory_budget=64.0))
    notes = [e.text for e in events if isinstance(e, Notice) and e.text.startswith("preflight")]
    assert len(notes) == 1 and "of the 64.00 GiB budget" in notes[0]
    assert checked == plain  # no gradient, dropout draw or optimizer state leaks into training

    # the memory panel's data: the largest batch's peak and shape, headroom to the budget
    sample = [e for e in events if isinstance(e, MemorySample)][-1]
    assert sample.budget == 64 * GIB and sample.oom_skipped == 0
    rows, src_len, tgt_len = sample.largest_batch
    assert rows * max(src_len, tgt_len) <= 500  # a real batch under max_tokens
    assert 0 < sample.largest_batch_peak < sample.budget
    assert sample.headroom == sample.budget - sample.largest_batch_peak
    assert sample.fit_max_tokens is None  # no fit.json in this run directory


def test_a_run_whose_largest_batch_exceeds_the_budget_stops_before_training_naming_what_fits(
        tmp_path):
    import os
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "engine", "--preset", "sample", "--run-dir", str(run_dir),
         "--set", "training.max_tokens=16384", "--set", "training.memory_budget=0.6",
         "--set", "training.precision=\"fp32\""],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 1
    failure = [line for line in (done.stdout + done.stderr).splitlines()
               if "out of memory ahead" in line]
    assert len(failure) == 1
    assert "the epoch's largest batch" in failure[0] and "over the 0.60 GiB budget" in failure[0]
    assert "training.max_tokens = 16384" in failure[0]
    assert " fits (estimated; transformer-train fit measures it)" in failure[0]
    events = (run_dir / "events.jsonl").read_text()
    assert '"BatchProgress"' not in events  # failed before the first batch
    assert not list(run_dir.glob("*.pt"))
