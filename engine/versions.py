"""What ran: the library versions and the device of a run, recorded in its ``RunStarted`` event
and in every checkpoint, and the one line the headless printer, ``transformer-train status`` and
the app show them in. No torch at import (the app shows them and never imports torch).
"""

from __future__ import annotations

import contextlib
import functools

VERSION_LABELS = {"torch": "torch", "cuda": "CUDA", "cudnn": "cuDNN", "nccl": "NCCL",
                  "driver": "driver", "device": ""}


@functools.cache
def versions(device_type: str = "cpu") -> dict[str, str]:
    """torch, and on CUDA the CUDA runtime, cuDNN, NCCL and driver versions, and the device (the
    GPU's name or the CPU model) a run on ``device_type`` uses. What the machine lacks, or NVML
    cannot tell, is left out. Asked once a process: they do not change while it runs."""
    import torch

    found = {"torch": torch.__version__}
    if device_type == "cuda" and torch.cuda.is_available():
        found["cuda"] = torch.version.cuda or ""
        if torch.backends.cudnn.is_available():
            found["cudnn"] = _cudnn_text(torch.backends.cudnn.version() or 0)
        with contextlib.suppress(Exception):  # a torch built without NCCL
            nccl = torch.cuda.nccl.version()
            found["nccl"] = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
        found["driver"] = _nvml_driver()
        found["device"] = torch.cuda.get_device_name()
    else:
        from engine.preflight import cpu_name

        found["device"] = cpu_name()
    # plain str: torch.__version__ is a str subclass that weights_only loading refuses
    return {key: str(value) for key, value in found.items() if value}


def versions_text(versions: dict[str, str]) -> str:
    """One line: "torch 2.13.0, CUDA 12.8, cuDNN 9.10.2, NCCL 2.27.3, driver 570.86, NVIDIA H100"."""
    labels = {**VERSION_LABELS, **{key: key for key in versions if key not in VERSION_LABELS}}
    return ", ".join(f"{labels[key]} {versions[key]}".strip()
                     for key in labels if versions.get(key))


def _cudnn_text(version: int) -> str:
    """torch's cuDNN integer as x.y.z: 91002 is 9.10.2 (cuDNN 9 on), 8907 is 8.9.7."""
    if not version:
        return ""
    major, rest = divmod(version, 10000) if version >= 10000 else divmod(version, 1000)
    return f"{major}.{rest // 100}.{rest % 100}"


def _nvml_driver() -> str:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            driver = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no NVML, no driver library, an old pynvml: left out
        return ""
    return driver.decode() if isinstance(driver, bytes) else str(driver)
