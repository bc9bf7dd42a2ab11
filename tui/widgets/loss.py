"""Loss page: train loss per step (smoothed), validation loss per epoch and BLEU (right axis) on
one chart, its legend above the plot (never over the curve) and integer step ticks; under it one
row per history people watch while training: learning rate, tokens/s, gradient norm and, in
fp16, the loss scale, as sparklines (a full chart each would not fit at 80x24)."""

from __future__ import annotations

import math

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Sparkline, Static
from textual_plotext import PlotextPlot

from tui.format import number
from tui.state import Curve, RunState
from tui.widgets.panel import StateView, set_display, show_text

# history name -> label, how its latest value reads
HISTORY_ROWS = {
    "lr": ("LR", lambda v: f"{v:.2e}"),
    "tokens_per_second": ("tok/s", lambda v: f"{v:,.0f}"),
    "gnorm": ("grad norm", lambda v: f"{v:.3g}"),
    "loss_scale": ("loss scale", lambda v: f"{v:g}"),
}
TRAIN_MARK, VAL_MARK, BLEU_MARK = "braille", "o", "+"  # shapes, so NO_COLOR still tells them apart


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


class HistoryRow(Horizontal):
    """One history: its name and latest value, then a sparkline of it over the steps."""

    def __init__(self, name: str) -> None:
        super().__init__(id=f"history-{name}", classes="history")
        self.history_name = name

    def compose(self) -> ComposeResult:
        yield Static(classes="history-label")
        yield Sparkline([], summary_function=max, classes="history-line")

    def show(self, curve: Curve) -> None:
        ys = curve.points()[1]
        set_display(self, bool(ys))
        if not ys:
            return
        label, fmt = HISTORY_ROWS[self.history_name]
        show_text(self.query_one(".history-label", Static),
                  Text(f"{label:<10} {fmt(ys[-1]):>9}", no_wrap=True, overflow="ellipsis"))
        self.query_one(Sparkline).data = ys


class LossPanel(StateView, Vertical):
    parts = ("loss",)
    min_seconds = 2.0  # a plotext chart costs ~10-20 ms to build; a curve of minutes needs no more

    def compose(self) -> ComposeResult:
        yield Static(id="loss-summary")
        yield Static(id="loss-legend")
        yield PlotextPlot(id="loss-plot")
        for name in HISTORY_ROWS:
            yield HistoryRow(name)

    def on_mount(self) -> None:
        self.border_title = "Loss"

    def draw(self, state: RunState) -> None:
        xs, ys = state.train_curve.points()
        summaries = state.summaries
        bleus = [s for s in summaries if s.bleu is not None]
        summary = Text(no_wrap=True, overflow="ellipsis")
        if ys:
            summary.append(f"train {number(ys[-1])} (smoothed) ")
        if summaries:
            last = summaries[-1]
            summary.append(f" val {number(last.val_loss)} (epoch {last.epoch})")
            if bleus:
                summary.append(f"  BLEU {bleus[-1].bleu:.2f}")
        if not ys and not summaries:
            summary.append("no training yet: the curve appears with the first batches", style="dim")
        show_text(self.query_one("#loss-summary", Static), summary)

        legend = Text(no_wrap=True, overflow="ellipsis")
        if ys:
            legend.append("⣿ train loss", style="bold")
        if summaries:
            legend.append("   ● val loss", style="bold")
        if bleus:
            legend.append("   + BLEU (right axis)", style="bold")
        show_text(self.query_one("#loss-legend", Static), legend)
        set_display(self.query_one("#loss-legend"), bool(ys or summaries))

        plot = self.query_one("#loss-plot", PlotextPlot)
        set_display(plot, bool(ys or summaries))
        plt = plot.plt
        plt.clear_data()
        plt.xlabel("step")
        steps = list(xs) + [s.step for s in summaries]
        if steps:
            ticks = step_ticks(min(steps), max(steps))
            plt.xticks(ticks, [f"{t:,}" for t in ticks])
        if ys:
            plt.plot(xs, ys, marker=TRAIN_MARK)
        if summaries:
            plt.plot([s.step for s in summaries], [s.val_loss for s in summaries], marker=VAL_MARK)
        if bleus:
            plt.plot([s.step for s in bleus], [s.bleu for s in bleus], marker=BLEU_MARK,
                     yside="right")
        plot.refresh()
        for row in self.query(HistoryRow):
            row.show(state.history[row.history_name])
