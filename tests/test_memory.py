"""MemoryProbe on this machine: NVML when there is an NVIDIA driver, a plain "n/a" reason when
there is none, and psutil's process and system memory either way."""

from __future__ import annotations

import json
import os
from pathlib import Path

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
            assert set(device) == {"name", "label", "uuid", "used", "total", "util",
                                   "processes", "processes_error"}
            assert device["label"].startswith("cuda:")


def test_without_cuda_in_use_the_torch_numbers_are_n_a():
    probe = MemoryProbe()
    reading = probe.sample()
    probe.close()
    import torch

    if not torch.cuda.is_available():
        assert (reading.torch_allocated, reading.torch_reserved, reading.torch_peak) == (
            None, None, None)


# --- NVML devices mapped to torch's devices by UUID -------------------------------------------

# a shared 4-GPU machine as NVML lists it (PCI order, every GPU, whoever uses it)
NVML = ["GPU-11111111-aaaa-4000-8000-000000000001", "GPU-22222222-bbbb-4000-8000-000000000002",
        "GPU-33333333-cccc-4000-8000-000000000003", "GPU-44444444-dddd-4000-8000-000000000004"]


def test_with_cuda_up_the_gpus_are_matched_by_uuid_in_torchs_order():
    from engine.memory import visible_devices

    # CUDA_VISIBLE_DEVICES=3,1: torch sees two GPUs, its cuda:0 is NVML's fourth
    torch_uuids = [NVML[3].removeprefix("GPU-"), NVML[1].removeprefix("GPU-")]
    assert visible_devices(NVML, torch_uuids, "3,1") == [("cuda:0", 3), ("cuda:1", 1)]
    # torch's UUIDs decide, whatever the variable says (CUDA may order by speed, not PCI)
    assert visible_devices(NVML, torch_uuids, None) == [("cuda:0", 3), ("cuda:1", 1)]
    assert visible_devices(NVML, [], "") == []


def test_without_cuda_the_variable_is_read_as_cuda_reads_it():
    from engine.memory import visible_devices

    every = [("cuda:0", 0), ("cuda:1", 1), ("cuda:2", 2), ("cuda:3", 3)]
    assert visible_devices(NVML, None, None) == every
    assert visible_devices(NVML, None, "2") == [("cuda:0", 2)]
    assert visible_devices(NVML, None, "3, 0") == [("cuda:0", 3), ("cuda:1", 0)]
    # UUIDs, whole or a unique prefix, with or without "GPU-"
    assert visible_devices(NVML, None, "GPU-33333333,22222222-bbbb") == [("cuda:0", 2),
                                                                         ("cuda:1", 1)]
    # CUDA stops at the first entry that names no device (-1 is the usual "none")
    assert visible_devices(NVML, None, "1,7,2") == [("cuda:0", 1)]
    assert visible_devices(NVML, None, "-1") == []
    assert visible_devices(NVML, None, "") == []
    assert visible_devices(NVML, None, "1,1") == [("cuda:0", 1)]


def test_a_cpu_run_never_starts_cuda(tmp_path):
    # a run on the CPU of a GPU machine must not take GPU memory on every GPU (checkpoint RNG
    # capture, the memory panel and preflight used to start CUDA); here in a fresh process
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import torch
        from engine.control import RunControl
        from engine.pipeline import run
        from tests.tiny_runs import tiny_config
        config = tiny_config(training__epochs=1, training__device="cpu")
        assert run(config, {str(tmp_path)!r}, lambda e: None, RunControl()) == "finished"
        print("cuda initialised:", torch.cuda.is_initialized())
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).parents[1],
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1",
                               "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "cuda initialised: False" in done.stdout
    assert (tmp_path / "checkpoint_last.pt").is_file()


# --- the run's samples say which processes are the run's, and of which device the peaks are --


def test_a_run_names_its_pid_and_device_in_its_memory_samples(tmp_path):
    from engine.control import RunControl
    from engine.events import MemorySample
    from engine.pipeline import run
    from tests.tiny_runs import tiny_config

    events: list = []
    config = tiny_config(training__epochs=1, training__device="cpu")
    assert run(config, tmp_path, events.append, RunControl()) == "finished"
    samples = [e for e in events if isinstance(e, MemorySample)]
    assert samples and all(s.pids == [os.getpid()] and s.device == "cpu" for s in samples)
    assert all(s.fit_peak is None for s in samples)  # no fit.json here


def test_two_ranks_are_both_named_in_rank_0s_samples(tmp_path):
    """torchrun, 2 ranks on the CPU: rank 0 writes the samples, with both ranks' pids (its own
    first: the heartbeat's), for the panel to mark both as the run's on the GPU."""
    import subprocess
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_distributed import job_env, torchrun

    from engine.eventlog import read_events
    from engine.events import MemorySample

    job = tmp_path / "two"
    done = subprocess.run(torchrun(job, "training.epochs=1"), capture_output=True, text=True,
                          env=job_env(), timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    samples = [e for e in read_events(job / "events.jsonl") if isinstance(e, MemorySample)]
    heartbeat = json.loads((job / "heartbeat").read_text())
    assert samples
    for sample in samples:
        assert len(sample.pids) == 2 and len(set(sample.pids)) == 2
        assert sample.pids[0] == heartbeat["pid"] and os.getpid() not in sample.pids


def test_a_run_with_a_matching_fit_json_says_what_the_fit_measured_at_its_max_tokens(tmp_path):
    """fit.json measured this run's max_tokens (and recommended another): the samples carry
    the measured peak, for the panel's "fit: ... of ... peak" and the chart's fit line."""
    import torch

    from engine import fit as fit_module
    from engine.control import RunControl
    from engine.device import resolve_precision
    from engine.events import MemorySample
    from engine.pipeline import run
    from tests.tiny_runs import tiny_config

    config = tiny_config(training__epochs=1, training__device="cpu",
                         training__memory_budget=1.5)
    mine = config.training.max_tokens
    budget = fit_module.memory_budget(config, torch.device("cpu"))
    precision, _ = resolve_precision(config.training.precision, torch.device("cpu"))
    fit_module.save_fit(fit_module.FitResult(
        device="cpu", budget_bytes=budget, margin_bytes=0, max_tokens=2 * mine,
        predicted_peak_bytes=600 * 2**20, target_tokens=None,
        points=[fit_module.FitPoint(mine, 345 * 2**20, True),
                fit_module.FitPoint(2 * mine, 600 * 2**20, True)],
        key=fit_module.fit_key(config, "cpu", precision, budget)), tmp_path)
    events: list = []
    assert run(config, tmp_path, events.append, RunControl()) == "finished"
    samples = [e for e in events if isinstance(e, MemorySample)]
    assert samples and all(s.fit_peak == 345 * 2**20 and s.fit_max_tokens == 2 * mine
                           for s in samples)
