"""The memory panel with Textual's Pilot on recorded GPU readings: who holds the GPU (the run's
processes marked, the others' use apart), the chart of used memory and batch peaks over the run
up to the device's end with the fit's level, NVML failing call by call ("n/a" for that item
only), and the CPU-only panel; at 80x24 (the compact run page) and at 120x40."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pynvml
import pytest
from nvml_recorded import GIB, H100_TOTAL, RecordedNvml, h100
from tui_runs import finished_run_events, jsonl_line, write_finished_run

from engine.events import BatchProgress, MemorySample
from engine.memory import MemoryProbe
from tui.app import TransformerApp
from tui.memory_chart import CEILING, LEVEL, MemoryHistory, chart
from tui.widgets.memory import MemoryPanel

RUN_PID = 4242  # the run's two ranks, as its samples say
RANK_1 = 4243
OTHER, NOTEBOOK = 5151, 6161  # another user's job, and a notebook
FIT_PEAK = int(31.4 * GIB)


def gpu_samples(batches: int) -> dict[int, MemorySample]:
    """The MemorySamples of a 2-rank run on an H100 shared with other processes, by the number
    of batches done when each was taken (one every 3 batches): the others arrive mid-run."""
    samples = {}
    for done in range(3, batches + 1, 3):
        ours = min(2 + done, 29) * GIB
        others = ([(OTHER, 10 * GIB)] if done > batches * 0.4 else []) + (
            [(NOTEBOOK, int(2.3 * GIB))] if done > batches * 0.7 else [])
        processes = [{"pid": RUN_PID, "name": "python", "used": ours},
                     {"pid": RANK_1, "name": "python", "used": 512 * 2**20}] + [
            {"pid": pid, "name": "python3" if pid == OTHER else "jupyter-lab", "used": used}
            for pid, used in others]
        used = ours + 512 * 2**20 + sum(u for _, u in others) + 600 * 2**20
        peak = int((20 + 8 * (done % 7) / 6) * GIB) if done > 10 else ours
        samples[done] = MemorySample(
            devices=[{"name": "NVIDIA H100 80GB HBM3", "label": "cuda:0", "used": used,
                      "total": H100_TOTAL, "util": 90, "processes": processes,
                      "processes_error": ""}],
            torch_allocated=18 * GIB, torch_reserved=30 * GIB, torch_peak=peak,
            process_rss=3 * GIB, system_used=40 * GIB, system_total=128 * GIB, max_tokens=8192,
            budget=H100_TOTAL, recent_peak=peak, largest_batch_peak=28 * GIB,
            largest_batch=[412, 19, 21], headroom=H100_TOTAL - 28 * GIB, fit_max_tokens=8192,
            fit_peak=FIT_PEAK, device="cuda:0", pids=[RUN_PID, RANK_1])
    return samples


def write_gpu_run(run_dir: Path) -> None:
    """A finished run (tests/tui_runs.py) whose memory samples are those of a GPU run."""
    write_finished_run(run_dir)
    events, lines, done = finished_run_events(), [], 0
    samples = gpu_samples(sum(isinstance(e, BatchProgress) for _, e in events))
    for at, event in events:
        if isinstance(event, MemorySample):
            continue
        lines.append(jsonl_line(event, at))
        if isinstance(event, BatchProgress):
            done += 1
            if done in samples:
                lines.append(jsonl_line(samples[done], at))
    (run_dir / "events.jsonl").write_text("".join(lines), encoding="utf-8")


async def panel_text(app: TransformerApp, pilot, loaded) -> str:
    deadline = time.monotonic() + 15
    while not loaded():
        assert time.monotonic() < deadline, "the run was not read in time"
        await pilot.pause(0.05)
    app.dashboard.refresh_panels(force=True)
    await pilot.pause()
    return str(app.dashboard.query_one(MemoryPanel).render())


def attached(run_dir: Path, size: tuple[int, int]) -> str:
    """The memory panel's text with the app attached to ``run_dir`` at ``size``."""

    async def story() -> str:
        app = TransformerApp(attach=run_dir)
        async with app.run_test(size=size) as pilot:
            text = await panel_text(app, pilot, lambda: app.state.status == "finished")
            assert app.dashboard.query_one(MemoryPanel).border_title == \
                "GPU memory: NVIDIA H100 80GB HBM3"
            return text

    return asyncio.run(story())


@pytest.fixture(autouse=True)
def in_a_fresh_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_at_120x40_the_panel_lists_who_holds_the_gpu_and_charts_the_run(tmp_path):
    write_gpu_run(tmp_path / "gpu")
    text = attached(tmp_path / "gpu", (120, 40))
    lines = text.splitlines()
    assert lines[0].startswith("cuda:0 ") and lines[0].endswith("42.4/79.6 GiB util 90%")
    # the run's two ranks are one sum, the others apart: who else holds memory
    assert lines[1] == "run 29.5 GiB · others 12.3 GiB in 2"
    rows = [line.split() for line in lines[2:6]]
    assert rows == [["run", "29.0", "GiB", str(RUN_PID), "python"],
                    ["run", "512.0", "MiB", str(RANK_1), "python"],
                    ["10.0", "GiB", str(OTHER), "python3"],
                    ["2.3", "GiB", str(NOTEBOOK), "jupyter-lab"]]
    # the chart, 5 rows: its top edge is where the device's memory ends, the fit's level
    # dashed, the batch peaks solid (20-28 GiB: up to the second row), used memory shaded
    plot = lines[6:11]
    assert plot[0] == CEILING * 35 + " 79.6G" and plot[-1].rstrip().endswith(" 0")
    assert plot[3].rstrip().endswith(" fit") and plot[3].startswith(LEVEL)
    assert plot[4][2:35] == "█" * 33  # peaks above 16 GiB once the run got going
    assert "░" * 20 in plot[2]  # 42 GiB used in all, once the others came
    assert lines[11].startswith("█ batch peak  ░ used  ┄ fit") and lines[11].endswith("x: 1m05s")
    assert "max_tokens 8,192  fit: 31.4 of 79.6 GiB" in text
    assert "Max batch (412x19/21) 28.0 GiB" in text and "Headroom 51.6 GiB of 79.6 GiB" in text


def test_at_80x24_what_matters_fits_half_the_width_and_seven_rows(tmp_path):
    write_gpu_run(tmp_path / "gpu")
    lines = attached(tmp_path / "gpu", (80, 24)).splitlines()
    assert len(lines) == 7 and all(len(line) <= 36 for line in lines)
    assert lines[0].startswith("cuda:0 ") and lines[0].endswith("42.4/79.6 GiB util 90%")
    assert lines[1] == "run 29.5 GiB · others 12.3 GiB in 2"
    assert lines[2] == CEILING * 30 + " 79.6G"  # a 3-row chart
    # the fit's 31.4 GiB is nearest the bottom row's top edge (26.5 GiB): named there
    assert lines[4].rstrip().endswith("fit") and "░" in lines[3]
    assert lines[5].startswith("█ peak ░ used ┄ fit") and lines[5].endswith("x: 1m05s")
    assert lines[6] == "max_tokens 8,192 fit 31.4/79.6 GiB"


def test_the_probe_reads_recorded_nvml_with_other_processes_present():
    """MemoryProbe on recorded readings: the same code as on the real library; names from
    psutil for pids it sees, from NVML for one it cannot (another pid namespace)."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        nvml = RecordedNvml([h100([(os.getpid(), 29 * GIB), (sleeper.pid, 10 * GIB),
                                   (4_000_001, None)])], names={4_000_001: "/opt/bin/trainer"})
        reading = MemoryProbe(nvml=nvml).sample()
        sleeper_name = psutil.Process(sleeper.pid).name()
    finally:
        sleeper.kill()
        sleeper.wait()
    (device,) = reading.devices
    assert (device["used"], device["total"], device["util"]) == (43 * GIB, H100_TOTAL, 87)
    # psutil's names for pids it sees, NVML's (the basename) for one it cannot
    assert device["processes"] == [
        {"pid": os.getpid(), "name": psutil.Process().name(), "used": 29 * GIB},
        {"pid": sleeper.pid, "name": sleeper_name, "used": 10 * GIB},
        {"pid": 4_000_001, "name": "trainer", "used": None}]
    assert nvml.calls.count("nvmlDeviceGetComputeRunningProcesses_v3") == 1


def test_an_older_driver_without_v3_is_asked_with_v2():
    nvml = RecordedNvml([h100([(os.getpid(), GIB)])],
                        missing=("nvmlDeviceGetComputeRunningProcesses_v3",))
    (device,) = MemoryProbe(nvml=nvml).sample().devices
    assert [p["used"] for p in device["processes"]] == [GIB]
    assert "nvmlDeviceGetComputeRunningProcesses_v2" in nvml.calls


CALLS = ["nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetUUID",
         "nvmlDeviceGetName", "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetUtilizationRates",
         "nvmlDeviceGetComputeRunningProcesses_v3", "nvmlSystemGetProcessName"]


@pytest.mark.parametrize("failing", CALLS)
def test_each_nvml_call_failing_in_turn_is_n_a_for_its_item_only(failing):
    """NVMLError on one call: what it answers shows "n/a" (or, without a device count, no
    device), everything else as before; the panel draws it."""
    code = pynvml.NVML_ERROR_NO_PERMISSION
    nvml = RecordedNvml([h100([(os.getpid(), 29 * GIB), (4_000_001, 10 * GIB)])],
                        failing={failing: code}, names={4_000_001: "trainer"})
    reading = MemoryProbe(nvml=nvml).sample()  # never raises
    assert failing in nvml.calls
    if failing == "nvmlDeviceGetCount":
        assert reading.devices == []
        return
    (device,) = reading.devices
    expected = {"name": "NVIDIA H100 80GB HBM3", "label": "cuda:0", "used": 43 * GIB,
                "total": H100_TOTAL, "util": 87}
    if failing == "nvmlDeviceGetHandleByIndex":
        expected = {"name": "GPU 0", "label": "cuda:0", "used": None, "total": None,
                    "util": None}
    elif failing == "nvmlDeviceGetName":
        expected["name"] = "GPU 0"
    elif failing == "nvmlDeviceGetMemoryInfo":
        expected["used"] = expected["total"] = None
    elif failing == "nvmlDeviceGetUtilizationRates":
        expected["util"] = None
    assert {k: device[k] for k in expected} == expected
    names = {p["pid"]: p["name"] for p in device["processes"] or []}
    if failing in ("nvmlDeviceGetHandleByIndex", "nvmlDeviceGetComputeRunningProcesses_v3"):
        assert device["processes"] is None
        assert device["processes_error"] in ("no handle", "Insufficient Permissions")
    elif failing == "nvmlSystemGetProcessName":  # the pid psutil cannot see has no name
        assert names[4_000_001] is None and names[os.getpid()]
    else:
        assert names[4_000_001] == "trainer"
    text = asyncio.run(probe_panel(nvml))
    assert "n/a" in text or failing in ("nvmlDeviceGetUUID", "nvmlSystemGetProcessName")
    if failing == "nvmlDeviceGetComputeRunningProcesses_v3":
        assert "processes n/a: no permission" in text  # NVML's words, shortened
        assert "util 87%" in text  # the rest of the device is read
    elif device["processes"] is not None:  # no run followed: nobody's to tell apart
        assert "39.0 GiB in 2 processes" in text and "others" not in text


async def probe_panel(nvml: RecordedNvml) -> str:
    """The panel of an app whose own probe reads ``nvml`` (no run followed)."""
    app = TransformerApp(probe=MemoryProbe(nvml=nvml), probe_seconds=0.05)
    async with app.run_test(size=(120, 40)) as pilot:
        return await panel_text(app, pilot, lambda: app.state.reading is not None)


def test_without_pids_in_its_samples_the_run_is_known_by_its_lock(tmp_path):
    """A run from before the samples named their pids: the lock's pid marks the run's own."""
    run_dir = tmp_path / "old"
    write_gpu_run(run_dir)
    lines = []
    for line in (run_dir / "events.jsonl").read_text().splitlines(keepends=True):
        lines.append(line.replace(f',"pids":[{RUN_PID},{RANK_1}]', ""))
    (run_dir / "events.jsonl").write_text("".join(lines))
    (run_dir / "run.lock").write_text(f'{{"pid": {RUN_PID}, "host": "elsewhere"}}')
    text = attached(run_dir, (120, 40))
    assert "run 29.0 GiB · others 12.8 GiB in 3" in text


def test_on_a_cpu_the_panel_charts_the_runs_rss_up_to_the_budget(tmp_path):
    run_dir = tmp_path / "cpu"
    write_finished_run(run_dir)  # its samples: RSS ~900 MiB, 16 GiB of system memory

    async def story(size):
        app = TransformerApp(attach=run_dir)
        async with app.run_test(size=size) as pilot:
            text = await panel_text(app, pilot, lambda: app.state.status == "finished")
            assert app.dashboard.query_one(MemoryPanel).border_title == \
                "Memory (CPU: process, system)"
            return text

    wide = asyncio.run(story((120, 40)))
    assert "RSS    904.0 MiB  (the run)" in wide
    assert "System " in wide and "6.0/16.0 GiB" in wide
    assert any(line.rstrip().endswith("16.0G") for line in wide.splitlines())
    assert "░ RSS" in wide  # (these older samples carry no batch peaks)
    compact = asyncio.run(story((80, 24))).splitlines()
    assert len(compact) <= 7 and all(len(line) <= 36 for line in compact)
    assert compact[0].startswith("RSS") and compact[1].startswith("System")


def test_the_history_keeps_the_whole_run_in_bounded_points():
    history = MemoryHistory()
    for i in range(2000):
        history.add(float(i), MemorySample(
            devices=[], torch_allocated=None, torch_reserved=None, torch_peak=None,
            process_rss=i, system_used=0, system_total=0, max_tokens=1, recent_peak=2 * i))
    assert len(history.points) <= 512
    assert history.points[0].at == 0.0 and history.points[-1].at == 1999.0  # first and last
    used, peaks = history.series("rss")
    assert max(v for _, v in used) == 1999 and max(v for _, v in peaks) == 3998  # maxima kept


def test_the_chart_draws_peaks_solid_used_memory_shaded_the_end_and_a_level():
    used = [(float(t), v * GIB) for t, v in enumerate([10, 20, 40, 40])]
    peaks = [(float(t), v * GIB) for t, v in enumerate([5, 15, 30, 35])]
    lines = [line.plain for line in chart(used, peaks, 80 * GIB, 10, 4, [(60 * GIB, "fit")])]
    # 4 rows of 20 GiB: the top edge at 80 GiB, the fit at 60, used 40 GiB two rows high
    assert lines == ["▔▔▔▔ 80.0G",
                     "┄┄┄┄ fit  ",
                     "  ▄▆      ",
                     "▂▆██ 0    "]


def test_the_runs_gpus_are_shown_as_the_run_names_them_with_this_apps_fresh_reading():
    """The run sees one GPU (CUDA_VISIBLE_DEVICES=1: its cuda:0 is NVML's second); this app
    sees both. The panel shows the run's GPU only, under the run's name for it, with the app's
    latest reading of that GPU (matched by UUID), and its chart."""
    other_gpu = h100([(OTHER, 70 * GIB)], used=71 * GIB, uuid="GPU-aaaa")
    runs_gpu = h100([(RUN_PID, 20 * GIB)], used=21 * GIB, uuid="GPU-bbbb")
    nvml = RecordedNvml([other_gpu, runs_gpu])
    sample = gpu_samples(30)[30]
    sample = MemorySample(**{**sample.__dict__, "devices": [
        {**sample.devices[0], "uuid": "GPU-bbbb", "used": 18 * GIB}]})

    async def story() -> str:
        app = TransformerApp(probe=MemoryProbe(nvml=nvml), probe_seconds=0.05)
        async with app.run_test(size=(120, 40)) as pilot:
            await panel_text(app, pilot, lambda: app.state.reading is not None)
            app.state.apply(sample, 1000.0)
            return await panel_text(app, pilot, lambda: True)

    lines = asyncio.run(story()).splitlines()
    assert lines[0].startswith("cuda:0 ") and lines[0].endswith("21.0/79.6 GiB util 87%")
    assert lines[1].strip() == "run 20.0 GiB · no other process"
    assert not any(line.startswith("cuda:1") for line in lines)
    assert lines[3].rstrip().endswith("79.6G")  # the chart, from the run's sample
