"""Which device trains and in which precision: one answer for preflight, training and commands."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.errors import ConfigError


def pick_device(choice: str) -> torch.device:
    """"auto": CUDA when there is a GPU, else the CPU; an explicit "cuda" without a GPU is an
    error (a run asked for a GPU must not train for days on the CPU by surprise)."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("[training] device = \"cuda\" but no CUDA device is available "
                          "(use \"auto\" or \"cpu\")")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def cpu_has_fast_bf16() -> bool:
    """Native bf16 matrix instructions (AVX512-BF16 or AMX); elsewhere bf16 is emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(choice: str, device: torch.device) -> tuple[str, torch.dtype | None]:
    """("fp32" | "bf16" | "fp16", autocast dtype or None)."""
    if choice == "auto":
        if device.type == "cuda":
            choice = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            choice = "bf16" if cpu_has_fast_bf16() else "fp32"
    if choice == "fp16" and device.type != "cuda":
        raise ConfigError("[training] precision = \"fp16\" needs a CUDA device; on the CPU use "
                          "\"bf16\" or \"fp32\"")
    if choice == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("[training] precision = \"bf16\": this GPU has no bfloat16; use "
                          "\"fp16\" or \"auto\"")
    return choice, {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[choice]
