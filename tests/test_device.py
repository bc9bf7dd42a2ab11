"""One device choice: preflight, training and the commands ask engine/device.py the same thing."""

import subprocess
import sys

import pytest
import torch

from engine.config import load_config
from engine.device import pick_device, resolve_precision
from engine.errors import ConfigError
from engine.preflight import preflight

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


def test_auto_and_cpu_choose_a_device_that_exists():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@no_gpu
def test_an_explicit_cuda_without_a_gpu_is_refused_by_training_and_preflight_alike(tmp_path):
    with pytest.raises(ConfigError, match=r'device = "cuda" but no CUDA device'):
        pick_device("cuda")
    with pytest.raises(ConfigError, match=r'device = "cuda" but no CUDA device'):
        preflight(load_config("sample", ["training.device=cuda"]), tmp_path)


@no_gpu
def test_the_cli_refuses_cuda_without_a_gpu_in_one_line_before_any_work(tmp_path):
    result = subprocess.run([sys.executable, "-m", "engine", "--set", "training.device=cuda",
                             "--until", "data"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "no CUDA device" in result.stderr
    assert not (tmp_path / "saved").exists()  # nothing written for a run that never started


def test_fp16_needs_a_gpu_and_fp32_has_no_autocast():
    assert resolve_precision("fp32", torch.device("cpu")) == ("fp32", None)
    with pytest.raises(ConfigError, match="fp16"):
        resolve_precision("fp16", torch.device("cpu"))
