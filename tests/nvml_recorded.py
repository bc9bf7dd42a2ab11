"""Recorded NVML readings, served by an object with pynvml's functions: MemoryProbe(nvml=...)
reads them through the same code as the real library. Failures are pynvml's own NVMLError
(the subclass for each NVML return code), raised by the call named in ``failing``.

The numbers: one H100 80GB shared with another user, as nvidia-smi showed it while a run
trained (our pid is the test process's, the others are pids of real child processes, so that
psutil names them)."""

from __future__ import annotations

from types import SimpleNamespace

import pynvml

GIB = 2**30
H100_TOTAL = 85_520_809_984  # nvmlDeviceGetMemoryInfo(...).total of an H100 80GB HBM3
UUID = "GPU-8e0fd1b5-5ac4-1d6c-a3a2-6f0b0e1c2d3e"


class RecordedNvml:
    """pynvml's calls the probe makes, answering from ``devices``: per GPU a dict with name,
    uuid, used, util and processes [(pid, used bytes or None)]. ``failing``: {call name: NVML
    return code} raised by that call; ``missing``: calls this driver does not have (v3)."""

    NVML_ERROR_FUNCTION_NOT_FOUND = pynvml.NVML_ERROR_FUNCTION_NOT_FOUND

    def __init__(self, devices: list[dict], failing: dict[str, int] | None = None,
                 missing: tuple[str, ...] = (), names: dict[int, str] | None = None) -> None:
        self.devices = devices
        self.failing = failing or {}
        self.missing = missing
        self.names = names or {}  # what nvmlSystemGetProcessName says of a pid
        self.calls: list[str] = []

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name in self.missing:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        if name in self.failing:
            raise pynvml.NVMLError(self.failing[name])

    def nvmlInit(self) -> None:
        self._call("nvmlInit")

    def nvmlShutdown(self) -> None:
        self._call("nvmlShutdown")

    def nvmlDeviceGetCount(self) -> int:
        self._call("nvmlDeviceGetCount")
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> dict:
        self._call("nvmlDeviceGetHandleByIndex")
        return self.devices[index]

    def nvmlDeviceGetUUID(self, handle: dict) -> str:
        self._call("nvmlDeviceGetUUID")
        return handle["uuid"]

    def nvmlDeviceGetName(self, handle: dict) -> str:
        self._call("nvmlDeviceGetName")
        return handle["name"]

    def nvmlDeviceGetMemoryInfo(self, handle: dict) -> SimpleNamespace:
        self._call("nvmlDeviceGetMemoryInfo")
        return SimpleNamespace(total=handle.get("total", H100_TOTAL), used=handle["used"],
                               free=handle.get("total", H100_TOTAL) - handle["used"])

    def nvmlDeviceGetUtilizationRates(self, handle: dict) -> SimpleNamespace:
        self._call("nvmlDeviceGetUtilizationRates")
        return SimpleNamespace(gpu=handle["util"], memory=30)

    def _processes(self, name: str, handle: dict) -> list[SimpleNamespace]:
        self._call(name)
        return [SimpleNamespace(pid=pid, usedGpuMemory=used, gpuInstanceId=0xFFFFFFFF,
                                computeInstanceId=0xFFFFFFFF)
                for pid, used in handle["processes"]]

    def nvmlDeviceGetComputeRunningProcesses_v3(self, handle: dict) -> list[SimpleNamespace]:
        return self._processes("nvmlDeviceGetComputeRunningProcesses_v3", handle)

    def nvmlDeviceGetComputeRunningProcesses_v2(self, handle: dict) -> list[SimpleNamespace]:
        return self._processes("nvmlDeviceGetComputeRunningProcesses_v2", handle)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: dict) -> list[SimpleNamespace]:
        return self._processes("nvmlDeviceGetComputeRunningProcesses", handle)

    def nvmlSystemGetProcessName(self, pid: int) -> bytes:
        self._call("nvmlSystemGetProcessName")
        if pid not in self.names:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return self.names[pid].encode()


def h100(processes: list[tuple[int, int | None]], used: int = 43 * GIB, util: int = 87,
         uuid: str = UUID) -> dict:
    return {"name": "NVIDIA H100 80GB HBM3", "uuid": uuid, "used": used, "util": util,
            "processes": processes}
