"""Memory panel: per GPU, NVML's used/total and utilisation, the processes holding it (the
run's own marked "run", the others' use apart: an out-of-memory error is often another
process's doing) and a chart of used memory and the per-batch peaks over the run, up to where
the device's memory ends, with the level the fit measured for this max_tokens; below, the run's
torch allocated / reserved / peak and what tuning max_tokens needs. Without an NVIDIA GPU the
same for the process: its RSS and peaks over time up to the system's memory (or
training.memory_budget), the per-batch peaks scaled to their own range.

The run's numbers come with its MemorySample events; unless the app was opened with --attach, it
also reads NVML and system memory itself (a probe in a thread worker of this panel). The panel
fits its height: the chart takes the rows left, and what matters least goes first when rows
are short (the compact run page gives it 7)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from rich.text import Text
from textual import work
from textual.widgets import Static
from textual.worker import get_current_worker

from engine.memory import MemoryProbe
from engine.runs import read_lock
from tui.format import bar_line, count, duration, size, size_pair, spark
from tui.memory_chart import chart
from tui.messages import MemoryRead
from tui.state import DashboardState
from tui.widgets.panel import StateView, show_text
from tui.workers import wait_unless_cancelled


class MemoryPanel(StateView, Static):
    parts = ("memory",)
    min_seconds = 1.0

    def __init__(self, attached: bool = False, probe: Any = None, probe_seconds: float = 2.0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.attached = attached
        self.probe = probe  # anything with .sample() -> MemoryReading; default: MemoryProbe
        self.probe_seconds = probe_seconds

    def on_mount(self) -> None:
        self.border_title = "Memory"  # "GPU memory" once a GPU is seen (draw)
        if not self.attached:  # attached, the run's own MemorySample events say it
            self.read_memory()

    @work(thread=True, group="probe", exit_on_error=False)
    def read_memory(self) -> None:
        """Read memory every probe_seconds, off the UI thread (NVML calls can block)."""
        worker = get_current_worker()
        probe = self.probe or MemoryProbe()
        try:
            while not worker.is_cancelled:
                self.post_message(MemoryRead(probe.sample()))
                if wait_unless_cancelled(worker, self.probe_seconds):
                    return
        finally:
            if probe is not self.probe:
                probe.close()

    def draw(self, state: DashboardState) -> None:
        width = self.content_size.width or 40
        height = self.content_size.height or 7
        reading, sample = state.reading, state.memory
        devices = _shown_devices(reading, sample)
        # titled for what it measures: the GPUs (with their name, a row saved), or on a machine
        # without one the process and the system's memory
        names = {device.get("name") or "n/a" for device in devices}
        if not devices:
            self.border_title = "Memory (CPU: process, system)"
        elif len(names) == 1:
            count_ = f"{len(devices)}× " if len(devices) > 1 else ""
            self.border_title = f"GPU memory: {count_}{names.pop()}"
        else:
            self.border_title = "GPU memory"
        blocks: list[Block] = []
        if devices:
            pids = _run_pids(state, getattr(self.screen, "followed", None) or state.run_dir)
            for index, device in enumerate(devices):
                blocks += _device_blocks(state, index, device, len(names) > 1, pids, width)
            blocks += _legend(state, True, width)
        elif reading is not None and reading.nvml_error:
            blocks.append(Block(4, [Text(f"GPU    n/a: {reading.nvml_error}", style="bold")]))
            blocks.append(Block(9, [Text("       process and system memory:")]))
        elif sample is not None:
            blocks.append(Block(4, [Text("GPU    n/a: no NVIDIA GPU in use", style="bold")]))
        elif self.attached:
            blocks.append(Block(0, [Text("waiting for the run's memory samples (sent while it "
                                         "trains)", style="dim")]))
        else:
            blocks.append(Block(0, [Text("reading memory…", style="dim")]))
        blocks += _process_blocks(state, bool(devices), width)
        blocks += _tuning_blocks(state, sample, bool(devices), width)
        text = Text(no_wrap=True, overflow="ellipsis")
        for line in fit_to_height(blocks, height):
            text.append_text(line)
            text.append("\n")
        text.rstrip()
        show_text(self, text)


def _shown_devices(reading: Any, sample: Any) -> list[dict[str, Any]]:
    """The run's GPUs, labelled as the run names them, each with this app's fresher reading of
    it when it has one (matched by UUID: the app may see the GPUs in another order); before
    the run's first sample, the GPUs this app sees."""
    mine = reading.devices if reading is not None else []
    if sample is None or not sample.devices:
        return mine
    fresh = {d.get("uuid"): d for d in mine if d.get("uuid")}
    return [{**d, **fresh[d.get("uuid")], "label": d.get("label")}
            if d.get("uuid") in fresh else d for d in sample.devices]


@dataclass
class Block:
    """Lines of the panel; ``priority``: 0 stays longest when rows are short. A chart block
    draws itself in the rows it is given (``chart(rows)``), at least ``min_rows``."""

    priority: int
    lines: list[Text] = field(default_factory=list)
    chart: Callable[[int], list[Text]] | None = None
    min_rows: int = 2
    max_rows: int = 5  # a taller chart says no more


WANTED_ROWS = 5  # a chart's rows worth dropping the least needed lines (priority >= 4) for


def fit_to_height(blocks: list[Block], height: int) -> list[Text]:
    """The blocks' lines in ``height`` rows: the least important blocks dropped until the
    charts have WANTED_ROWS (dropping only lines of priority 4 and more for that), then until
    they have their minimum rows; the charts share what is left."""
    kept = list(blocks)

    def room() -> int:
        return height - sum(len(b.lines) for b in kept if b.chart is None)

    for rows, droppable in ((WANTED_ROWS, 4), (None, 1)):
        while kept:
            charts = [b for b in kept if b.chart is not None]
            need = sum(rows or b.min_rows for b in charts)
            least = max(range(len(kept)), key=lambda i: (kept[i].priority, i))
            if room() >= need or kept[least].priority < droppable:
                break
            del kept[least]
    charts = [b for b in kept if b.chart is not None]
    share = room() // len(charts) if charts else 0
    lines: list[Text] = []
    for block in kept:
        if block.chart is None:
            lines += block.lines
        elif share >= block.min_rows:
            lines += block.chart(min(share, block.max_rows))
    return lines


def _run_pids(state: DashboardState, run_dir: Any) -> set[int]:
    """The run's processes: every rank, as its samples say; for a run from before they said,
    the pid in the lock of ``run_dir`` (the directory followed)."""
    if state.memory is not None and state.memory.pids:
        return set(state.memory.pids)
    holder = read_lock(run_dir) if run_dir else None
    pid = holder.get("pid") if holder else None
    return {pid} if isinstance(pid, int) else set()


def _device_blocks(state: DashboardState, index: int, device: dict[str, Any], with_name: bool,
                   pids: set[int], width: int) -> list[Block]:
    """A GPU's line, who holds it, and its chart over the run."""
    used, total, util = device.get("used"), device.get("total"), device.get("util")
    fraction = used / total if used is not None and total else None
    label = device.get("label") or f"GPU{index}"
    blocks = []
    if with_name:
        blocks.append(Block(5, [Text(f"{label:<7}{device.get('name') or 'n/a'}", style="bold")]))
    suffix = f"{size_pair(used, total)} util {'n/a' if util is None else f'{util}%'}"
    blocks.append(Block(0, [Text(bar_line(f"{label:<7}", fraction, suffix, width))]))
    blocks += _holders(device, pids, width)
    sample = state.memory
    history = state.memory_history
    run_device = sample is not None and (sample.device == label or (
        not sample.device and index == 0))
    if total and history.points:
        series_used, series_peaks = history.series(label)
        levels = []
        if run_device and sample.fit_peak:
            levels.append((sample.fit_peak, "fit"))
        if run_device and sample.budget and sample.budget < total:
            levels.append((sample.budget, "budget"))
        blocks.append(Block(2 if run_device else 4, chart=lambda rows: chart(
            series_used, series_peaks, total, width, rows, levels)))
    return blocks


SHORT_REASONS = {"Insufficient Permissions": "no permission", "Not Supported": "unsupported",
                 "Function Not Found": "old driver", "GPU is lost": "GPU lost"}


def _holders(device: dict[str, Any], pids: set[int], width: int) -> list[Block]:
    """Who holds the GPU: the run's processes and the others' (summed), and each process when
    there is room. Older samples have no "processes": nothing is said."""
    if "processes" not in device:
        return []
    processes = device["processes"]
    if processes is None:
        reason = device.get("processes_error") or "Not Supported"
        line = f"       processes n/a ({reason})"
        if len(line) > width:  # at half of 80 columns: NVML's words, shorter
            line = f"processes n/a: {SHORT_REASONS.get(reason, reason)}"
        return [Block(1, [Text(line, style="dim")])]
    ours = [p for p in processes if p.get("pid") in pids]
    others = [p for p in processes if p.get("pid") not in pids]
    parts = []
    if pids:
        parts.append(f"run {_sum(ours)}" if ours else "run: none here")
    unknown = sum(p.get("used") is None for p in others)
    some_unknown = f" ({unknown} n/a)" if 0 < unknown < len(others) else ""
    if others and pids:
        parts.append(f"others {_sum(others)} in {len(others)}{some_unknown}")
    elif others:  # no run to tell apart (none followed yet)
        parts.append(f"{_sum(others)} in {len(others)} process"
                     f"{'es' if len(others) > 1 else ''}{some_unknown}")
    else:
        parts.append("no other process" if pids else "no process")
    summary = "       " + " · ".join(parts)
    if len(summary) > width:  # at half of 80 columns: the indent goes first
        summary = summary.lstrip()
    style = "bold" if others else ""
    blocks = [Block(1, [Text(summary, style=style)])]
    rows = []
    by_use = sorted(processes, key=lambda p: (p.get("pid") not in pids, -(p.get("used") or 0)))
    for p in by_use:
        mark = "run" if p.get("pid") in pids else ""
        rows.append(Text(f"  {mark:<4}{size(p.get('used')):>10} {p.get('pid') or 'n/a':>7} "
                         f"{p.get('name') or 'n/a'}", style="" if mark else "bold"))
    if rows:
        blocks.append(Block(6, rows))
    return blocks


def _sum(processes: list[dict[str, Any]]) -> str:
    known = [p["used"] for p in processes if p.get("used") is not None]
    return size(sum(known)) if known else "n/a"


def _process_blocks(state: DashboardState, with_gpu: bool, width: int) -> list[Block]:
    """torch's allocator (GPU), the run's RSS and the system's memory."""
    reading, sample = state.reading, state.memory
    allocated = _first(sample, reading, "torch_allocated")
    blocks = []
    if with_gpu or allocated is not None:
        # short enough for half of 80 columns (the compact run page): nothing cut
        blocks.append(Block(7, [Text(f"torch  {size(allocated)}, peak "
                                     f"{size(_first(sample, reading, 'torch_peak'))}")]))
        blocks.append(Block(8, [Text(f"       reserved "
                                     f"{size(_first(sample, reading, 'torch_reserved'))}")]))
    # the run is its own process: its RSS comes with its samples; this app's is a stand-in
    rss = _first(sample, reading, "process_rss")
    used = _first(reading, sample, "system_used")
    total = _first(reading, sample, "system_total")
    if rss is not None:
        blocks.append(Block(8 if with_gpu else 2, [Text(
            f"RSS    {size(rss)}  ({'the run' if sample is not None else 'this app'})")]))
    if used is not None and total:
        blocks.append(Block(8 if with_gpu else 1, [Text(
            bar_line("System ", used / total, size_pair(used, total), width))]))
    # where the run's memory ends: training.memory_budget, else the system's (older samples
    # have no budget)
    end = sample.budget or sample.system_total if sample is not None else 0
    if not with_gpu and end and state.memory_history.points:
        used_, peaks = state.memory_history.series("rss")
        levels = [(sample.fit_peak, "fit")] if sample.fit_peak else []
        blocks.append(Block(2, chart=lambda rows: chart(used_, peaks, end, width, rows, levels)))
        blocks += _legend(state, False, width)
    return blocks


def _legend(state: DashboardState, with_gpu: bool, width: int) -> list[Block]:
    """Under the charts: what they show, and the time they span (the whole run so far)."""
    sample, history = state.memory, state.memory_history
    if sample is None or not history.points:
        return []
    area = "used" if with_gpu else "RSS"
    fit = "  ┄ fit" if sample.fit_peak else ""
    span = f"  x: {duration(history.seconds())}"
    peak = "█ batch peak  " if any(p.peak is not None for p in history.points) else ""
    legend = f"{peak}░ {area}{fit}"
    if len(legend) + len(span) > width:
        legend = legend.replace("batch peak", "peak").replace("  ", " ")
    return [Block(3, [Text(legend + span.rjust(max(width - len(legend), 0)), style="dim")])]


def _max_tokens_line(state: DashboardState, sample: Any | None, width: int) -> list[Block]:
    """max_tokens, and what the fit measured for it (or recommended)."""
    if state.max_tokens is None:
        return []
    line = Text(f"max_tokens {count(state.max_tokens)}", style="bold")
    if sample is not None and sample.fit_peak and sample.budget:
        measured = size_pair(sample.fit_peak, sample.budget)  # "31.4/79.6 GiB"
        # as much of it as the width takes (at 80 columns, the short one)
        for fit in (f"  fit: {measured.replace('/', ' of ')} peak",
                    f"  fit: {measured.replace('/', ' of ')}", f" fit {measured}"):
            if len(line) + len(fit) <= width:
                break
        line.append(fit)
    elif sample is not None and sample.fit_max_tokens:
        line.append(f"  fit: {count(sample.fit_max_tokens)}")
    blocks = [Block(1, [line])]
    if sample is not None and sample.fit_peak and sample.fit_max_tokens and \
            sample.fit_max_tokens != state.max_tokens:
        blocks.append(Block(6, [Text(f"fit recommends {count(sample.fit_max_tokens)}")]))
    return blocks


def _tuning_blocks(state: DashboardState, sample: Any | None, with_gpu: bool,
                   width: int) -> list[Block]:
    """What a person tuning max_tokens against out-of-memory errors watches: max_tokens and
    what the fit measured, the largest batch's peak and its shape, the headroom to the budget,
    the batches skipped, the recent peaks."""
    blocks = _max_tokens_line(state, sample, width)
    if sample is None:
        return blocks
    if sample.largest_batch_peak is not None:
        shape = sample.largest_batch
        where = f" ({shape[0]}x{shape[1]}/{shape[2]})" if len(shape) == 3 else ""
        blocks.append(Block(5, [Text(f"Max batch{where} {size(sample.largest_batch_peak)}")]))
    if sample.headroom is not None and sample.budget:
        blocks.append(Block(4, [Text(f"Headroom {size(sample.headroom)} of {size(sample.budget)}",
                                     style="bold red" if sample.headroom < 0 else "")]))
    if sample.oom_skipped:
        blocks.append(Block(0, [Text(f"OOM batches skipped {sample.oom_skipped}",
                                     style="bold red")]))
    peaks = list(state.peak_history)
    if peaks:  # scaled to their own range: against the whole budget a CPU's peaks look flat
        low, high = min(peaks), max(peaks)
        span = f" {size(low)}-{size(high)}" if high > low else f" {size(high)}"
        line = spark(peaks, max(width - 7 - len(span), 0), top=high, bottom=low)
        blocks.append(Block(6 if with_gpu else 4, [Text(f"Peaks  {line}{span}")]))
    return blocks


def _first(primary: Any, secondary: Any, name: str) -> Any:
    for source in (primary, secondary):
        value = getattr(source, name, None) if source is not None else None
        if value is not None:
            return value
    return None
