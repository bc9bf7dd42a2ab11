"""Preflight names the device and warns when the disk is too small for the preset."""

from engine.config import load_config
from engine.preflight import disk_needed_bytes, parameter_count, preflight


def test_cpu_preflight_names_the_cpu_and_the_threads(tmp_path):
    report = preflight(load_config("sample", ["training.device=cpu"]), tmp_path)
    assert report.device == "cpu"
    assert report.device_names and report.device_names[0]
    assert report.threads >= 1
    assert report.disk_free_gb > 0


def test_full_preset_needs_tens_of_gigabytes():
    needed = disk_needed_bytes(load_config("full"))
    assert 10e9 < needed < 200e9
    assert disk_needed_bytes(load_config("sample")) < 1e9


def test_transformer_base_has_about_the_papers_parameter_count():
    # The paper's base model: 65M parameters (37k shared vocabulary).
    assert 55e6 < parameter_count(load_config("full")) < 75e6


def test_low_disk_is_a_warning(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(100, 99, 1_000_000))
    report = preflight(load_config("full"), tmp_path)
    assert "GB free" in report.warning and "needs about" in report.warning
