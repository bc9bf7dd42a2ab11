"""The memory panel's history and its chart: what the run's MemorySamples said over time (used
memory per GPU, or the run's RSS on a CPU, and the per-batch peaks), drawn as a few rows of
blocks with time on x, the top edge where the memory ends and dashed lines at the levels that
matter (the fit's measured peak, a memory budget below the total). Text, so that it reads at
half of 80 columns and without colour (the peaks solid, the rest of the used memory shaded)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.text import Text

MAX_POINTS = 512  # then pairs of points are merged (their maximum): the whole run, bounded
CELL = " ▁▂▃▄▅▆▇█"  # 8 levels a cell
SHADE, CEILING, LEVEL = "░", "▔", "┄"


@dataclass
class MemoryPoint:
    at: float
    used: dict[str, int | None]  # per series: GPU label ("cuda:0") or "rss"
    peak: int | None  # the highest batch peak since the previous sample
    peak_of: str  # the series the peak belongs to (the run's device)


class MemoryHistory:
    def __init__(self) -> None:
        self.points: list[MemoryPoint] = []

    def clear(self) -> None:
        self.points = []

    def add(self, at: float, sample: Any) -> None:
        """One MemorySample: NVML's used per GPU when it listed GPUs, else the run's RSS."""
        if sample.devices:
            used = {d.get("label") or f"GPU{i}": d.get("used")
                    for i, d in enumerate(sample.devices)}
            peak_of = sample.device if sample.device in used else next(iter(used))
        else:
            used, peak_of = {"rss": sample.process_rss or None}, "rss"
        self.points.append(MemoryPoint(at, used, sample.recent_peak, peak_of))
        if len(self.points) > MAX_POINTS:  # halve the resolution, keep the highest of each pair
            older, newest = self.points[:-1], self.points[-1]  # the run's first and last stay
            self.points = [_merge(a, b) for a, b in zip(older[::2], older[1::2])] + (
                older[-1:] if len(older) % 2 else []) + [newest]

    def series(self, name: str) -> tuple[list[tuple[float, int | None]], list[tuple[float, int]]]:
        """(at, used) and (at, batch peak) of one series."""
        used = [(p.at, p.used.get(name)) for p in self.points if name in p.used]
        peaks = [(p.at, p.peak) for p in self.points if p.peak_of == name and p.peak is not None]
        return used, peaks

    def seconds(self) -> float:
        return self.points[-1].at - self.points[0].at if self.points else 0.0


def _merge(a: MemoryPoint, b: MemoryPoint) -> MemoryPoint:
    used = {k: _max(a.used.get(k), b.used.get(k)) for k in {**a.used, **b.used}}
    return MemoryPoint(a.at, used, _max(a.peak, b.peak), b.peak_of)


def _max(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


def _columns(points: list[tuple[float, Any]], start: float, end: float,
             width: int) -> list[Any]:
    """The highest value in each of ``width`` equal slices of [start, end]; a slice with no
    point repeats the one before (samples come every few seconds, not evenly spread)."""
    out: list[Any] = [None] * width
    span = end - start
    for at, value in points:
        if value is None:
            continue
        i = min(int((at - start) / span * width), width - 1) if span > 0 else width - 1
        out[i] = value if out[i] is None else max(out[i], value)
    for i in range(1, width):
        if out[i] is None:
            out[i] = out[i - 1]
    return out


def chart(used: list[tuple[float, int | None]], peaks: list[tuple[float, int]], top: int,
          width: int, rows: int, levels: list[tuple[int, str]] = (),
          labels: int = 6) -> list[Text]:
    """``rows`` lines of ``width`` columns, time on x, 0 to ``top`` (where the memory ends,
    the top edge) on y: each column's highest batch peak as a solid bar, the used memory
    above it shaded, each (value, name) of ``levels`` as a dashed line. Solid and shaded differ
    in shape, not only in colour. The rightmost ``labels`` columns name the top and levels."""
    plot = max(width - labels, 1)
    times = [at for at, _ in used] + [at for at, _ in peaks]
    if not times or top <= 0 or rows <= 0:
        return []
    start, end = min(times), max(times)
    used_columns = _columns(used, start, end, plot)
    peak_columns = _columns(peaks, start, end, plot)
    level_rows = {}
    for value, name in levels:
        if 0 < value < top:
            # the row whose top edge is nearest the level
            level_rows.setdefault(max(round(value / top * rows) - 1, 0), name)

    def eighths(value: int | None) -> int:
        return 0 if value is None else round(min(value, top) / top * rows * 8)

    lines = []
    for row in range(rows - 1, -1, -1):  # the top row first; ``row`` counts from the bottom
        line = Text(no_wrap=True)
        for value, peak in zip(used_columns, peak_columns):
            solid = min(max(eighths(peak) - row * 8, 0), 8)
            shaded = eighths(value) - row * 8
            if solid:
                line.append(CELL[solid], style="yellow")
            elif shaded >= 4 or (row == 0 and shaded > 0):  # (at least half) this cell used
                line.append(SHADE, style="green")
            elif row in level_rows:
                line.append(LEVEL, style="magenta")
            elif row == rows - 1:
                line.append(CEILING, style="red")
            else:
                line.append(" ")
        label = (short_size(top) if row == rows - 1 else level_rows.get(row, "0" if row == 0
                                                                          else ""))
        line.append(f" {label}"[:labels].ljust(labels), style="dim")
        lines.append(line)
    return lines


def short_size(n_bytes: int | float | None) -> str:
    """'79.6G', '512M': a size in five columns, for the chart's axis."""
    if n_bytes is None:
        return "n/a"
    for unit, scale in (("T", 2**40), ("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if n_bytes >= scale:
            value = n_bytes / scale
            return f"{value:.1f}{unit}" if value < 100 else f"{value:.0f}{unit}"
    return f"{int(n_bytes)}B"
