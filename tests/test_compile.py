"""training.compile: a compiled training step gives the eager step's losses, and checkpoints
written by either resume in the other (no ``_orig_mod.`` keys). A tiny model, fp32, no dropout
(the compiled dropout draws other masks than the eager one)."""

from __future__ import annotations

import shutil

import pytest
import torch
from tiny_runs import tiny_config, train_run

from engine import checkpoint as ckpt
from engine.events import BatchProgress, Notice, StageFinished
from engine.train import loop as train_loop
from engine.train.compiling import compile_wanted

pytestmark = pytest.mark.usefixtures("one_thread")


def losses(events) -> dict[int, float]:
    """Each update's loss, by step."""
    return {e.step: e.loss for e in events if isinstance(e, BatchProgress)}


def part(steps: dict[int, float], first: int, last: int) -> dict[int, float]:
    return {step: loss for step, loss in steps.items() if first <= step <= last}


def config(compiled: bool, updates: int):
    return tiny_config(training__compile=compiled, training__max_updates=updates,
                       training__checkpoint_every_updates=0, training__average_last=0,
                       model__dropout=0.0)


def test_auto_compiles_on_cuda_only():
    assert compile_wanted("auto", torch.device("cuda")) is True
    assert compile_wanted("auto", torch.device("cpu")) is False
    assert compile_wanted(True, torch.device("cpu")) is True
    assert compile_wanted(False, torch.device("cuda")) is False


def test_compiled_and_eager_training_agree_and_resume_each_other(tmp_path, monkeypatch):
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("torch.compile needs a C compiler on the CPU; none found")
    monkeypatch.setattr(train_loop, "PROGRESS_SECONDS", 0.0)  # every update's loss
    status, straight = train_run(tmp_path / "straight", config(False, 6))
    assert status == "finished"
    eager = losses(straight)
    assert list(eager) == [1, 2, 3, 4, 5, 6]

    # 3 updates compiled: the same losses (fp32, to within kernel reordering)
    status, first = train_run(tmp_path / "compiled", config(True, 3))
    assert status == "finished"
    said = [n.text for n in first if isinstance(n, Notice) and "compiled" in n.text]
    assert len(said) == 1 and said[0].startswith("compiled the training step in ")
    info = [e.info for e in first if isinstance(e, StageFinished) and e.stage == "train"][0]
    assert info["compile_seconds"] > 0 and info["compiled_graphs"] >= 1
    assert losses(first) == pytest.approx(part(eager, 1, 3), rel=1e-4)
    saved = ckpt.load_checkpoint(tmp_path / "compiled" / ckpt.LAST)
    assert not [key for key in saved["model"] if "_orig_mod" in key]

    # the compiled run's checkpoint continues eagerly, an eager one compiled: same losses
    status, eager_after = train_run(tmp_path / "compiled", config(False, 6), resume="last")
    assert status == "finished"
    assert losses(eager_after) == pytest.approx(part(eager, 4, 6), rel=1e-4)
    status, _ = train_run(tmp_path / "eager", config(False, 3))
    status, compiled_after = train_run(tmp_path / "eager", config(True, 6), resume="last")
    assert status == "finished"
    assert losses(compiled_after) == pytest.approx(part(eager, 4, 6), rel=1e-4)


def test_the_compile_key_takes_true_false_or_auto():
    from engine.config import load_config
    from engine.errors import ConfigError

    assert load_config("sample").training.compile == "auto"
    assert load_config("sample", ["training.compile=true"]).training.compile is True
    with pytest.raises(ConfigError) as refused:
        load_config("sample", ["training.compile=\"yes\""])
    assert str(refused.value) == ('--set training.compile="yes": [training] compile = \'yes\': '
                                  'must be true or false or "auto"')
