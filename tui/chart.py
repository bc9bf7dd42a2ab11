"""What the loss chart shows, decided without Textual: which stretch of the run (the whole run or
the recent window), linear or log y, and round ticks on both axes. The loss panel draws what
``chart_view`` returns; tests check it here, point by point."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

RECENT_SHARE = 0.1  # the recent window: the last 10% of the steps so far...
RECENT_MIN_STEPS = 20  # ...and never fewer than this many
LOG_MANTISSAS = ((1,), (1, 2, 5), (1, 1.5, 2, 3, 5, 7), (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9))


def step_ticks(low: float, high: float, most: int = 5) -> list[int]:
    """At most ``most`` whole steps from low to high, at a round spacing (1, 2, 5 x 10^k)."""
    low, high = math.floor(low), math.ceil(high)
    if high <= low:
        return [int(low)]
    rough = (high - low) / max(most - 1, 1)
    magnitude = 10 ** math.floor(math.log10(rough)) if rough >= 1 else 1
    spacing = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= rough)
    first = math.ceil(low / spacing) * spacing
    return list(range(int(first), int(high) + 1, int(spacing)))


def _round_spacing(span: float, most: int) -> float:
    rough = span / max(most - 1, 1)
    magnitude = 10 ** math.floor(math.log10(rough))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= rough * (1 - 1e-9))


def value_ticks(low: float, high: float, most: int = 5) -> tuple[list[float], float]:
    """Round ticks (1, 2, 2.5, 5 x 10^k apart) that enclose low..high, at most ``most`` + 1 of
    them; and the range (bottom, top) they span, which the chart's y limits follow."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return [], 0.0
    if high - low < 1e-9:
        pad = max(abs(high) * 0.05, 0.01)
        low, high = low - pad, high + pad
    spacing = _round_spacing(high - low, most)
    bottom = math.floor(low / spacing + 1e-9) * spacing
    top = math.ceil(high / spacing - 1e-9) * spacing
    count = int(round((top - bottom) / spacing))
    return [round(bottom + i * spacing, 10) for i in range(count + 1)], spacing


def log_ticks(low: float, high: float, most: int = 6) -> list[float]:
    """Round values (1, 2, 5 x 10^k, or finer when the range is narrow) between low and high
    (both > 0), at least two of them when the range allows, at most ``most``."""
    if low <= 0 or high <= low:
        return [low] if low > 0 else []
    best: list[float] = []
    for mantissas in LOG_MANTISSAS:
        ticks = [m * 10.0 ** k for k in range(math.floor(math.log10(low)),
                                              math.ceil(math.log10(high)) + 1)
                 for m in mantissas]
        ticks = [round(t, 10) for t in ticks if low * (1 - 1e-9) <= t <= high * (1 + 1e-9)]
        if len(ticks) > most:
            break
        best = ticks
        if len(ticks) >= 3:
            break
    return best


def tick_label(value: float, spacing: float | None = None) -> str:
    """As many decimals as the tick spacing needs, no more (2.5, 3, 3.5 -> "2.5", "3.0", "3.5")."""
    if spacing is None:  # log ticks: the value's own digits
        return f"{value:g}"
    decimals = max(0, -math.floor(math.log10(spacing) + 1e-9))
    if abs(spacing * 10 ** decimals - round(spacing * 10 ** decimals)) > 1e-6:
        decimals += 1  # 2.5 apart: one more decimal than 1 apart
    return f"{value:.{decimals}f}"


@dataclass
class Series:
    xs: list[float] = field(default_factory=list)
    ys: list[float] = field(default_factory=list)


@dataclass
class ChartView:
    """One drawing of the chart: the series cut to the window (y in the plotted scale), the axes'
    limits and ticks (positions in the plotted scale, labels in the loss's own units)."""

    train: Series
    val: Series
    bleu: Series
    x_range: tuple[float, float] | None
    x_ticks: list[int]
    y_range: tuple[float, float] | None
    y_ticks: list[float]
    y_labels: list[str]
    bleu_ticks: list[float]
    bleu_labels: list[str]
    window: str  # "whole" or "recent"
    log: bool


def thin(series: Series, buckets: int) -> Series:
    """At most about ``buckets`` points: the mean of each bucket of x, the first and last
    points as they are. A chart ``buckets`` dots wide shows no more, and plotext's cost grows
    with the points (75 ms for 4,000, 12 ms for 160)."""
    if buckets < 2 or len(series.xs) <= 2 * buckets:
        return series
    low, high = series.xs[0], series.xs[-1]
    width = (high - low) / buckets or 1.0
    sums: dict[int, list[float]] = {}
    for x, y in zip(series.xs[1:-1], series.ys[1:-1]):
        bucket = sums.setdefault(min(int((x - low) / width), buckets - 1), [0.0, 0.0, 0])
        bucket[0] += x
        bucket[1] += y
        bucket[2] += 1
    middle = [(sx / n, sy / n) for sx, sy, n in (sums[k] for k in sorted(sums))]
    return Series([series.xs[0], *(x for x, _ in middle), series.xs[-1]],
                  [series.ys[0], *(y for _, y in middle), series.ys[-1]])


def recent_start(last_step: float, first_step: float) -> float:
    span = max((last_step - first_step) * RECENT_SHARE, RECENT_MIN_STEPS)
    return max(first_step, last_step - span)


def _cut(xs: list[float], ys: list[float], start: float) -> Series:
    kept = [(x, y) for x, y in zip(xs, ys) if x >= start and math.isfinite(y)]
    return Series([x for x, _ in kept], [y for _, y in kept])


def chart_view(train: tuple[list[float], list[float]], val: tuple[list[float], list[float]],
               bleu: tuple[list[float], list[float]], window: str = "whole", log: bool = False,
               rows: int = 12, columns: int = 0) -> ChartView:
    """The chart for these (step, value) series. ``window="recent"``: the last 10% of the steps
    (at least RECENT_MIN_STEPS), every series cut to it and y fitted to what is left; ``log``:
    losses on a log scale (BLEU keeps its own linear right axis); ``rows``: the plot's height,
    which bounds how many y ticks read well; ``columns``: its width, which bounds the train
    curve's points (two braille dots a column; 0: all of them)."""
    steps = [*train[0], *val[0], *bleu[0]]
    start = -math.inf
    if window == "recent" and steps:
        start = recent_start(max(steps), min(steps))
    t, v, b = _cut(*train, start), _cut(*val, start), _cut(*bleu, start)
    t = thin(t, 2 * columns)
    if log:  # losses are positive (cross entropy); a zero would be a bug upstream, not drawn
        t = Series([x for x, y in zip(t.xs, t.ys) if y > 0], [math.log10(y) for y in t.ys if y > 0])
        v = Series([x for x, y in zip(v.xs, v.ys) if y > 0], [math.log10(y) for y in v.ys if y > 0])
    shown = [*t.xs, *v.xs, *b.xs]
    x_range = (min(shown), max(shown)) if shown else None
    x_ticks = step_ticks(*x_range) if x_range else []
    most = max(2, min(6, rows // 3))  # a tick every 3 rows or more: evenly spaced on screen
    ys = [*t.ys, *v.ys]
    y_range, y_ticks, y_labels = None, [], []
    if ys:
        if log:
            low, high = 10 ** min(ys), 10 ** max(ys)
            values = log_ticks(low, high, most)
            if len(values) < 2:  # a range too narrow for round log values: linear ones
                values = value_ticks(low, high, most)[0]
                values = [value for value in values if value > 0]
            bottom, top = min([low, *values]), max([high, *values])
            y_range = (math.log10(bottom), math.log10(top))
            y_ticks = [math.log10(value) for value in values]
            y_labels = [tick_label(value) for value in values]
        else:
            y_ticks, spacing = value_ticks(min(ys), max(ys), most)
            y_range = (y_ticks[0], y_ticks[-1])
            y_labels = [tick_label(value, spacing) for value in y_ticks]
    bleu_ticks, bleu_labels = [], []
    if b.ys:
        bleu_ticks, spacing = value_ticks(min(b.ys), max(b.ys), min(most, 4))
        bleu_labels = [tick_label(value, spacing) for value in bleu_ticks]
    return ChartView(t, v, b, x_range, x_ticks, y_range, y_ticks, y_labels, bleu_ticks,
                     bleu_labels, window, log)
