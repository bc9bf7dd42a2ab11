"""Preflight, first thing in every run: which device trains, and is there disk for the run.

The device is engine/device.py's choice, the one training makes: an explicit ``device = "cuda"``
without a GPU fails here, before any work."""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

from engine.config import RunConfig
from engine.events import Preflight

WMT14_TRAIN_PAIRS = 4_508_785
# Rough bytes a training pair costs on disk: the datasets cache (arrow, ~300 B), the run's
# corpus/ text (~250 B) and its encoded ids in data/ (~250 B; both measured at 4.5M WMT14-size
# pairs: 1.1 GB each). Orders of magnitude, not a promise.
BYTES_PER_PAIR = 800


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def parameter_count(config: RunConfig) -> int:
    """Approximate parameters of the configured model (embeddings counted once when shared)."""
    m, v = config.model, config.tokenizer.vocab_size
    attention = 4 * m.d_model * m.d_model
    ffn = 2 * m.d_model * m.ffn_hidden
    layers = m.n_layers * (attention + ffn) + m.n_layers * (2 * attention + ffn)
    embeddings = v * m.d_model * (1 if config.tokenizer.shared else 3)
    return layers + embeddings


def disk_needed_bytes(config: RunConfig) -> int:
    pairs = config.data.train_size or (WMT14_TRAIN_PAIRS if config.data.source == "wmt14" else 0)
    if config.data.source == "wmt14" and config.data.train_size == 0:
        data_bytes = pairs * BYTES_PER_PAIR * 2  # download archives plus the prepared cache
    else:
        data_bytes = pairs * BYTES_PER_PAIR
    # a checkpoint holds fp32 weights plus Adam's two moments
    checkpoint = parameter_count(config) * 4 * 3
    kept = (config.training.keep_last or config.training.epochs) + 2  # + last and best
    return data_bytes + checkpoint * kept


def preflight(config: RunConfig, run_dir: Path) -> Preflight:
    import torch

    from engine.device import pick_device

    use_cuda = pick_device(config.training.device).type == "cuda"
    if use_cuda:
        count = torch.cuda.device_count()
        names = [torch.cuda.get_device_name(i) for i in range(count)]
        memory = [round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)
                  for i in range(count)]
    else:
        names, memory = [cpu_name()], []
    free = shutil.disk_usage(run_dir).free
    needed = disk_needed_bytes(config)
    warning = ""
    if free < needed:
        warning = (f"only {free / 1e9:.1f} GB free at {run_dir}, this preset needs about "
                   f"{needed / 1e9:.1f} GB (data, caches, checkpoints)")
    return Preflight(device="cuda" if use_cuda else "cpu", device_names=names,
                     device_memory_gb=memory, threads=torch.get_num_threads() or os.cpu_count() or 1,
                     disk_free_gb=round(free / 1e9, 2), disk_needed_gb=round(needed / 1e9, 2),
                     warning=warning)
