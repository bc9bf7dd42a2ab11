"""The comparison's charts and legend: each run one colour AND one pair of marker shapes (a small
one for its train loss line, a large one for its validation losses and BLEU), so that NO_COLOR
still tells the runs apart; x by update or by tokens seen. Round ticks come from tui/chart.py.

A run's curve holds up to engine/history.py's MAX_CURVE_POINTS points; a chart is a few hundred
cells wide, so each series is thinned to about two points a column before plotext draws it
(ten runs of 4,000 points would cost plotext far more than a key press may take)."""

from __future__ import annotations

import math

from rich.text import Text
from textual_plotext import PlotextPlot

from engine.compare import AXES, ComparedRun, Points, short_count
from tui.chart import step_ticks, tick_label, value_ticks

# per run: (train line's marker, validation/BLEU marker); shapes differ from run to run
MARKERS = (("•", "●"), ("x", "X"), ("+", "#"), ("o", "O"), ("*", "@"), ("^", "A"), ("v", "V"),
           ("s", "S"), ("z", "Z"), ("-", "="))
# per run: (plotext colour, the legend's rich colour), the same hue in both
COLORS = (("cyan", "cyan"), ("orange", "dark_orange"), ("green", "green"),
          ("magenta", "magenta"), ("red", "red"), ("blue", "dodger_blue1"), ("yellow", "yellow"),
          ("white", "white"), ("cyan+", "bright_cyan"), ("green+", "bright_green"))
POINTS_PER_COLUMN = 1


def style_of(index: int) -> tuple[tuple[str, str], tuple[str, str]]:
    """(markers, colours) of the index-th run (they repeat past ten runs)."""
    return MARKERS[index % len(MARKERS)], COLORS[index % len(COLORS)]


def run_label(index: int, name: str) -> Text:
    """The run's markers in its colour, then its name: the legend's and the table's label."""
    (small, large), (_, colour) = style_of(index)
    label = Text(no_wrap=True, overflow="ellipsis")
    # the space ends the marks' segment: an SVG export (the README's PNG) lost a leading one
    label.append(f"{small}{large} ", style=f"bold {colour}")
    label.append(name)
    return label


def legend(compared: list[ComparedRun]) -> Text:
    text = Text()
    for index, run in enumerate(compared):
        if index:
            text.append("   ")
        text.append_text(run_label(index, run.name))
    return text


def thin(xs: list[float], ys: list[float], most: int) -> tuple[list[float], list[float]]:
    """At most about ``most`` evenly spread points, the first and the last kept."""
    if len(xs) <= most:
        return xs, ys
    stride = math.ceil(len(xs) / most)
    keep = list(range(0, len(xs), stride))
    if keep[-1] != len(xs) - 1:
        keep.append(len(xs) - 1)
    return [xs[i] for i in keep], [ys[i] for i in keep]


def x_label(value: float, axis: str) -> str:
    return f"{value:,.0f}" if axis == "update" else short_count(value, digits=-1)  # 150k


def draw(plot: PlotextPlot, compared: list[ComparedRun], axis: str, curves: tuple[str, ...],
         empty: str) -> None:
    """Draw ``curves`` ("train", "val", "bleu": the ComparedRun fields) of every run on
    ``plot``, x by ``axis``; ``empty``: what the plot says when no run has a point yet."""
    width = max(plot.size.width, 20)
    rows = plot.size.height - 3 if plot.size.height > 5 else 10
    series: list[tuple[int, str, list[float], list[float]]] = []
    for index, run in enumerate(compared):
        for curve in curves:
            points: Points = getattr(run, curve)
            if points.values:
                xs, ys = thin(points.xs(axis), points.values, POINTS_PER_COLUMN * width)
                series.append((index, curve, xs, ys))
    plt = plot.plt
    plt.clear_data()
    plt.xlabel("")
    if not series:
        plt.title(empty)
        plot.refresh()
        return
    plt.title("")
    all_x = [x for *_, xs, _ in series for x in xs]
    all_y = [y for *_, ys in series for y in ys]
    low, high = min(all_x), max(all_x)
    plt.xlim(low, high if high > low else low + 1)
    ticks = step_ticks(low, high)  # round values (1, 2, 5 x 10^k apart), of updates or tokens
    plt.xticks(ticks, [x_label(t, axis) for t in ticks])
    y_ticks, spacing = value_ticks(min(all_y), max(all_y), max(2, min(6, rows // 3)))
    plt.ylim(y_ticks[0], y_ticks[-1])
    plt.yticks(y_ticks, [tick_label(value, spacing) for value in y_ticks])
    # train lines first, the validation and BLEU marks over them (what is drawn later covers):
    # a few marks hide little of a line, and the runs are judged by them
    for index, curve, xs, ys in sorted(series, key=lambda s: s[1] != "train"):
        (small, large), (colour, _) = style_of(index)
        if curve == "train":
            plt.plot(xs, ys, marker=small, color=colour)
        else:  # one point an epoch: marks, not a line (a line of large marks hides the rest)
            plt.scatter(xs, ys, marker=large, color=colour)
    plot.refresh()


def axis_subtitle(axis: str) -> str:
    other = "tokens" if axis == "update" else "update"
    return f"x: {AXES[axis]} · key x: {AXES[other]}"
