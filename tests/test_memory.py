"""MemoryProbe on this machine: NVML when there is an NVIDIA driver, a plain "n/a" reason when
there is none, and psutil's process and system memory either way."""

from __future__ import annotations

import os

import psutil

from engine.memory import MemoryProbe


def test_the_probe_reads_this_process_and_the_system_and_never_raises():
    probe = MemoryProbe()
    try:
        reading = probe.sample()
    finally:
        probe.close()
    rss = psutil.Process(os.getpid()).memory_info().rss
    assert 0.5 * rss < reading.process_rss < 2 * rss
    assert 0 < reading.system_used < reading.system_total == psutil.virtual_memory().total
    if reading.nvml_error:  # no NVIDIA driver (this project's CI): say so, list no devices
        assert reading.devices == []
        assert "NVIDIA" in reading.nvml_error or "NVML" in reading.nvml_error
    else:  # a GPU machine: one entry per device, each value a number or None ("n/a")
        assert reading.devices
        for device in reading.devices:
            assert set(device) == {"name", "used", "total", "util"}


def test_without_cuda_in_use_the_torch_numbers_are_n_a():
    probe = MemoryProbe()
    reading = probe.sample()
    probe.close()
    import torch

    if not torch.cuda.is_available():
        assert (reading.torch_allocated, reading.torch_reserved, reading.torch_peak) == (
            None, None, None)
