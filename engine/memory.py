"""MemoryProbe: GPU memory through NVML, this process's torch allocator, process and system memory.

Every NVML call may fail (no driver, a GPU fallen off the bus, a call the driver does not
support, no permission to see other users' processes, MIG): each one degrades to None, shown as
"n/a", for that item only, and never raises. Without an NVIDIA driver ``nvml_error`` says so in
plain words and the panel shows psutil's numbers instead.

Per GPU the probe also lists the compute processes NVML reports (pid, name, memory): the
panel marks the run's own and shows the others' use apart (an out-of-memory error is often
another process's doing). Names come from psutil, else from NVML (a pid this process cannot
see, e.g. in another container's pid namespace).

``MemoryProbe(nvml=...)`` takes any module with pynvml's functions: the tests feed recorded
readings (and NVMLErrors) through the same code as the real library.

NVML numbers every GPU of the machine in PCI order and ignores ``CUDA_VISIBLE_DEVICES``; CUDA
numbers only the visible ones, in its own order. ``visible_devices`` maps one onto the other by
UUID, so a shared machine's panel lists only this run's GPUs, labelled ``cuda:N`` as torch
names them. The probe never starts CUDA: it asks torch for UUIDs only once the engine has.

Below the probe, the engine's side: ``reset_peak``/``peak_since_reset`` (the peak of a batch, a
fit probe or a preflight step on one device) and ``current_usage``; they import torch when
called, so the app can import this module without it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psutil


@dataclass(frozen=True)
class MemoryReading:
    nvml_error: str = ""  # "" when NVML answered
    # per GPU: name, label, uuid, used, total, util, processes ([{pid, name, used}], None = n/a)
    # and processes_error (why they are n/a)
    devices: list[dict[str, Any]] = field(default_factory=list)
    torch_allocated: int | None = None  # bytes, this process, None without CUDA
    torch_reserved: int | None = None
    torch_peak: int | None = None
    process_rss: int | None = None
    system_used: int | None = None
    system_total: int | None = None


def _try(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception:  # NVML raises its own error classes, and more besides when it is broken
        return None


class MemoryProbe:
    def __init__(self, pid: int | None = None, nvml: Any = None) -> None:
        """``nvml``: the NVML module (default: pynvml)."""
        self._process = psutil.Process(pid or os.getpid())
        self._nvml: Any = None
        self._nvml_error = ""
        try:
            if nvml is None:
                import pynvml as nvml
            nvml.nvmlInit()
            self._nvml = nvml
        except Exception as exc:
            self._nvml_error = _explain_nvml_failure(exc)

    def sample(self) -> MemoryReading:
        memory = _try(psutil.virtual_memory)
        return MemoryReading(
            nvml_error=self._nvml_error,
            devices=self._devices(),
            **_torch_memory(),
            process_rss=_try(lambda: self._process.memory_info().rss),
            system_used=None if memory is None else memory.total - memory.available,
            system_total=None if memory is None else memory.total,
        )

    def _devices(self) -> list[dict[str, Any]]:
        nvml = self._nvml
        if nvml is None:
            return []
        handles = [_try(lambda: nvml.nvmlDeviceGetHandleByIndex(index))
                   for index in range(_try(nvml.nvmlDeviceGetCount) or 0)]
        uuids = [_text(_try(lambda: nvml.nvmlDeviceGetUUID(h))) if h is not None else ""
                 for h in handles]
        devices = []
        for label, index in visible_devices(uuids, _torch_uuids(),
                                            os.environ.get("CUDA_VISIBLE_DEVICES")):
            handle = handles[index]
            if handle is None:
                devices.append({"name": f"GPU {index}", "label": label, "uuid": "",
                                "used": None, "total": None, "util": None, "processes": None,
                                "processes_error": "no handle"})
                continue
            name = _try(lambda: nvml.nvmlDeviceGetName(handle))
            memory = _try(lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
            util = _try(lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
            devices.append({
                "name": _text(name) or f"GPU {index}",
                "label": label,
                "uuid": uuids[index],  # the app matches the run's GPUs to its own reading by it
                "used": None if memory is None else int(memory.used),
                "total": None if memory is None else int(memory.total),
                "util": None if util is None else int(util.gpu),
                **self._processes(handle),
            })
        return devices

    def _processes(self, handle: Any) -> dict[str, Any]:
        """{"processes": [{pid, name, used}] (used None: n/a), "processes_error": ""}, or
        processes None with the reason NVML gave."""
        nvml, found, error = self._nvml, None, "Not Supported"
        # v3 where the driver has it; an older driver lacks the symbol: the next version down
        for version in ("_v3", "_v2", ""):
            call = getattr(nvml, f"nvmlDeviceGetComputeRunningProcesses{version}", None)
            if call is None:
                continue
            try:
                found = call(handle)
                break
            except Exception as exc:
                error = _nvml_reason(exc)
                if getattr(exc, "value", None) != getattr(nvml, "NVML_ERROR_FUNCTION_NOT_FOUND",
                                                          13):
                    break
        if found is None:
            return {"processes": None, "processes_error": error}
        processes = []
        for info in found:
            pid = _try(lambda: int(info.pid))
            used = getattr(info, "usedGpuMemory", None)
            processes.append({"pid": pid, "name": self._process_name(pid),
                              "used": None if used is None else int(used)})
        return {"processes": processes, "processes_error": ""}

    def _process_name(self, pid: int | None) -> str | None:
        if pid is None:
            return None
        name = _try(lambda: psutil.Process(pid).name())
        if not name:  # a pid this process cannot see: NVML may still know it (full path)
            name = os.path.basename(_text(_try(lambda: self._nvml.nvmlSystemGetProcessName(pid))))
        return name or None

    def close(self) -> None:
        if self._nvml is not None:
            _try(self._nvml.nvmlShutdown)
            self._nvml = None


def _nvml_reason(exc: Exception) -> str:
    """NVML's words for a failed call, short: "Insufficient Permissions", "Not Supported"."""
    return (str(exc) or type(exc).__name__).removeprefix("NVML: ")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


def _uuid_key(uuid: str) -> str:
    """NVML says "GPU-8e0f...", torch "8e0f..."; MIG devices start "MIG-"."""
    uuid = uuid.strip().lower()
    for prefix in ("gpu-", "mig-"):
        if uuid.startswith(prefix):
            return uuid[len(prefix):]
    return uuid


def visible_devices(nvml_uuids: list[str], torch_uuids: list[str] | None,
                    cuda_visible: str | None) -> list[tuple[str, int]]:
    """[(torch's name "cuda:N", NVML index)] for the GPUs this process can use, in torch's order.

    ``torch_uuids``: torch.cuda.get_device_properties(N).uuid for each visible N, when CUDA is up
    (exact). Without them, ``cuda_visible`` (CUDA_VISIBLE_DEVICES) as CUDA reads it: a comma list
    of indices or UUIDs (a unique prefix is enough), parsing stops at the first entry that names
    no device; an integer is taken as an NVML index (exact with CUDA_DEVICE_ORDER=PCI_BUS_ID).
    Unset: every device.
    """
    keys = [_uuid_key(u) for u in nvml_uuids]
    if torch_uuids is not None:
        found = []
        for n, uuid in enumerate(torch_uuids):
            key = _uuid_key(uuid)
            if key and key in keys:
                found.append((f"cuda:{n}", keys.index(key)))
        return found
    if cuda_visible is None:
        return [(f"cuda:{i}", i) for i in range(len(nvml_uuids))]
    chosen: list[int] = []
    for entry in cuda_visible.split(","):
        entry = entry.strip()
        if entry.lstrip("+-").isdigit():
            index = int(entry)
            if not 0 <= index < len(keys):
                break
        else:
            prefix = _uuid_key(entry)
            matches = [i for i, key in enumerate(keys) if prefix and key.startswith(prefix)]
            if len(matches) != 1:
                break
            index = matches[0]
        if index in chosen:
            break  # CUDA refuses a device listed twice
        chosen.append(index)
    return [(f"cuda:{n}", index) for n, index in enumerate(chosen)]


def _torch_uuids() -> list[str] | None:
    """torch's UUID of each visible GPU, only once this process has started CUDA."""
    torch = sys.modules.get("torch")
    if torch is None or not _try(torch.cuda.is_initialized):
        return None
    return _try(lambda: [str(torch.cuda.get_device_properties(n).uuid)
                         for n in range(torch.cuda.device_count())])


# --- peaks: what a batch, a probe or an epoch took (the engine's side; torch imported here) --


def reset_peak(device: Any, sync: bool = True) -> None:
    """Start a new peak on ``device`` (a torch.device): the CUDA allocator's, or this process's
    peak resident memory (Linux: writing 5 to /proc/self/clear_refs resets VmHWM to the current
    resident size). The allocator counts what the host has queued, so ``sync=False``
    (training) is exact enough."""
    import torch

    if device.type == "cuda":
        if sync:
            torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # then the peak is the process's lifetime peak: higher, never lower


def peak_since_reset(device: Any, sync: bool = True) -> int:
    import torch

    if device.type == "cuda":
        if sync:
            torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    return resident_peak()


def resident_peak() -> int:
    """This process's peak resident memory in bytes (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_usage(device: Any) -> int:
    """Bytes in use now: the CUDA allocator's, or this process's resident memory."""
    import torch

    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    return int(psutil.Process().memory_info().rss)


def _explain_nvml_failure(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, ImportError):
        return "NVML not installed (nvidia-ml-py)"
    if "Library Not Found" in text or "not found" in text.lower():
        return "no NVIDIA driver found"
    if "Driver Not Loaded" in text:
        return "NVIDIA driver not loaded"
    return f"NVML: {text}"


def _torch_memory() -> dict[str, int | None]:
    """This process's CUDA allocator, only if the engine already brought torch and CUDA up
    (never initialises CUDA from the UI)."""
    none = {"torch_allocated": None, "torch_reserved": None, "torch_peak": None}
    torch = sys.modules.get("torch")
    if torch is None or not _try(torch.cuda.is_initialized):
        return none
    return {
        "torch_allocated": _try(torch.cuda.memory_allocated),
        "torch_reserved": _try(torch.cuda.memory_reserved),
        "torch_peak": _try(torch.cuda.max_memory_allocated),
    }


def trim_heap() -> bool:
    """Hand the C heap's free memory back to the kernel (glibc ``malloc_trim``): with batch
    shapes that change every step, freed blocks pile up between live ones and resident memory
    creeps up batch after batch though what is in use does not. False where there is no glibc.
    The pages given back fault in again when used: call it when memory is short, not always."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False
