"""Memory panel: NVML used/total and utilisation per device, the run's torch allocated /
reserved / peak, and max_tokens beside them, so that a user tuning max_tokens sees the peak move.
The run's numbers come with its MemorySample events; unless the app was opened with --attach, it
also reads NVML and system memory itself (a probe in a thread worker of this panel). Without an
NVIDIA GPU it is titled for what it shows: the run's RSS and the system's memory, and the
per-batch peaks scaled to their own range."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import work
from textual.widgets import Static
from textual.worker import get_current_worker

from engine.memory import MemoryProbe
from tui.format import bar_line, count, size, size_pair, spark
from tui.messages import MemoryRead
from tui.state import RunState
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

    def draw(self, state: RunState) -> None:
        width = self.content_size.width or 40
        reading, sample = state.reading, state.memory
        text = Text(no_wrap=True, overflow="ellipsis")
        # NVML devices: this app's probe when it has them, else what the engine sampled
        devices = (reading.devices if reading and reading.devices else None) or \
                  (sample.devices if sample else [])
        # titled for what it measures: the GPUs, or on a machine without one the process and
        # the system's memory
        self.border_title = "GPU memory" if devices else "Memory (CPU: process, system)"
        if devices:
            names = {device.get("name") or "n/a" for device in devices}
            if len(names) == 1:
                text.append(f"{len(devices)}× {names.pop()}\n" if len(devices) > 1
                            else f"{names.pop()}\n", style="bold")
            for index, device in enumerate(devices):
                _device_line(text, index, device, len(names) > 1, width)
        elif reading is not None and reading.nvml_error:
            text.append(f"GPU    n/a: {reading.nvml_error}\n", style="bold")
            text.append("       process and system memory:\n")
        elif sample is not None:
            text.append("GPU    n/a: no NVIDIA GPU in use\n", style="bold")
        elif self.attached:
            text.append("waiting for the run's memory samples (sent while it trains)\n", style="dim")
        else:
            text.append("reading memory…\n", style="dim")

        allocated = _first(sample, reading, "torch_allocated")
        reserved = _first(sample, reading, "torch_reserved")
        peak = _first(sample, reading, "torch_peak")
        if devices or allocated is not None:
            # short enough for half of 80 columns (the compact run page): nothing cut
            text.append(f"torch  {size(allocated)}, peak {size(peak)}\n"
                        f"       reserved {size(reserved)}\n")
        # the run is its own process: its RSS comes with its samples; this app's is a stand-in
        rss = _first(sample, reading, "process_rss")
        used = _first(reading, sample, "system_used")
        total = _first(reading, sample, "system_total")
        if rss is not None:
            text.append(f"RSS    {size(rss)}  ({'the run' if sample is not None else 'this app'})\n")
        if used is not None and total:
            text.append(bar_line("System ", used / total, size_pair(used, total), width) + "\n")
        if state.max_tokens is not None:
            text.append(f"max_tokens {count(state.max_tokens)}", style="bold")
            if sample is not None and sample.fit_max_tokens:
                text.append(f"  fit: {count(sample.fit_max_tokens)}")
            text.append("\n")
        if sample is not None:
            _tuning_lines(text, sample, list(state.peak_history), width)
        text.rstrip()
        show_text(self, text)


def _tuning_lines(text: Text, sample: Any, peaks: list[int], width: int) -> None:
    """What a person tuning max_tokens against out-of-memory errors watches: the largest batch's
    peak and its shape, the headroom to the budget, the batches skipped, the recent peaks."""
    if sample.largest_batch_peak is not None:
        shape = sample.largest_batch
        where = f" ({shape[0]}x{shape[1]}/{shape[2]})" if len(shape) == 3 else ""
        text.append(f"Max batch{where} {size(sample.largest_batch_peak)}\n")
    if sample.headroom is not None and sample.budget:
        text.append(f"Headroom {size(sample.headroom)} of {size(sample.budget)}",
                    style="bold red" if sample.headroom < 0 else "")
        text.append("\n")
    if sample.oom_skipped:
        text.append(f"OOM batches skipped {sample.oom_skipped}\n", style="bold red")
    if peaks:  # scaled to their own range: against the whole budget a CPU's peaks look flat
        low, high = min(peaks), max(peaks)
        span = f" {size(low)}-{size(high)}" if high > low else f" {size(high)}"
        line = spark(peaks, max(width - 7 - len(span), 0), top=high, bottom=low)
        text.append(f"Peaks  {line}{span}\n")


def _device_line(text: Text, index: int, device: dict[str, Any], with_name: bool,
                 width: int) -> None:
    used, total, util = device.get("used"), device.get("total"), device.get("util")
    fraction = used / total if used is not None and total else None
    label = f"{device.get('label') or f'GPU{index}':<7}"  # torch's name for it: cuda:N
    if with_name:
        text.append(f"{label}{device.get('name') or 'n/a'}\n", style="bold")
    suffix = f"{size_pair(used, total)} util {'n/a' if util is None else f'{util}%'}"
    text.append(bar_line(label, fraction, suffix, width) + "\n")


def _first(primary: Any, secondary: Any, name: str) -> Any:
    for source in (primary, secondary):
        value = getattr(source, name, None) if source is not None else None
        if value is not None:
            return value
    return None
