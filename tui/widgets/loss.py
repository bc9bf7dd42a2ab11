"""Loss page: the train loss per step (smoothed) drawn over the validation loss (o) and BLEU (+,
right axis), so the curve the run is judged by is never hidden; a legend line above the plot with
the latest values; the chart's window (whole run or the recent steps) and scale (linear or log)
on the bottom border, toggled with keys; under the plot one row of sparklines people watch while
training (learning rate, tokens/s, gradient norm and, in fp16, the loss scale). What is drawn is
decided in tui/chart.py."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Sparkline, Static
from textual_plotext import PlotextPlot

from tui.chart import chart_view
from tui.format import number
from tui.state import Curve, DashboardState
from tui.widgets.panel import StateView, set_display, show_text

# history name -> label, how its latest value reads
HISTORY_ROWS = {
    "lr": ("LR", lambda v: f"{v:.2e}"),
    "tokens_per_second": ("tok/s", lambda v: f"{v:,.0f}"),
    "gnorm": ("gnorm", lambda v: f"{v:.3g}"),
    "loss_scale": ("scale", lambda v: f"{v:g}"),
}
TRAIN_MARK, VAL_MARK, BLEU_MARK = "braille", "o", "+"  # shapes, so NO_COLOR still tells them apart
# (plotext colour, the legend's rich colour) per series: the legend's glyph matches the chart
TRAIN_COLOR, VAL_COLOR, BLEU_COLOR = ("cyan", "cyan"), ("orange", "dark_orange"), ("green", "green")
WINDOWS = {"whole": "whole run", "recent": "last 10% of steps"}


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
                  Text(f"{label} {fmt(ys[-1])} ", no_wrap=True, overflow="ellipsis"))
        # a copy: the curve appends to its own list, and a reactive given the same list object
        # sees no change (the sparklines froze, after a resume among other times)
        self.query_one(Sparkline).data = list(ys)


class LossPanel(StateView, Vertical):
    parts = ("loss",)
    min_seconds = 2.0  # a plotext chart costs ~10-20 ms to build; a curve of minutes needs no more

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.window = "whole"  # or "recent"
        self.log_scale = False

    def compose(self) -> ComposeResult:
        yield Static(id="loss-legend")
        yield PlotextPlot(id="loss-plot")
        with Horizontal(id="loss-histories"):
            for name in HISTORY_ROWS:
                yield HistoryRow(name)

    def on_mount(self) -> None:
        self.border_title = "Loss"

    def toggle_window(self) -> None:
        self.window = "recent" if self.window == "whole" else "whole"

    def toggle_log(self) -> None:
        self.log_scale = not self.log_scale

    def draw(self, state: DashboardState) -> None:
        train = state.train_curve.points()
        summaries = state.summaries
        bleus = [s for s in summaries if s.bleu is not None]
        legend = Text(no_wrap=True, overflow="ellipsis")
        # no segment starts with a space: an SVG export (the README's screenshots) lost it
        if train[1]:
            legend.append("⣿ ", style=f"bold {TRAIN_COLOR[1]}")
            legend.append("train ", style="bold")
            legend.append(f"{number(train[1][-1])} smoothed  ")
        if summaries:
            last = summaries[-1]
            legend.append("o ", style=f"bold {VAL_COLOR[1]}")
            legend.append("val ", style="bold")
            legend.append(f"{number(last.val_loss)} (epoch {last.epoch})  ")
        if bleus:
            legend.append("+ ", style=f"bold {BLEU_COLOR[1]}")
            legend.append("BLEU ", style="bold")
            legend.append(f"{bleus[-1].bleu:.2f} (right)")
        if not train[1] and not summaries:
            legend.append("no training yet: the curve appears with the first batches", style="dim")
        show_text(self.query_one("#loss-legend", Static), legend)
        self.border_subtitle = (f"x: update · {WINDOWS[self.window]} · "
                                f"{'log' if self.log_scale else 'linear'} y")

        plot = self.query_one("#loss-plot", PlotextPlot)
        set_display(plot, bool(train[1] or summaries))
        # the plot's rows: its height less the frame's two rows and the x ticks' row (12 until
        # the first layout has sized it)
        rows = plot.size.height - 3 if plot.size.height > 5 else 12
        view = chart_view(train, ([s.step for s in summaries], [s.val_loss for s in summaries]),
                          ([s.step for s in bleus], [s.bleu for s in bleus]),
                          window=self.window, log=self.log_scale, rows=rows,
                          columns=plot.size.width)
        plt = plot.plt
        plt.clear_data()
        plt.xlabel("")
        if view.x_range is not None:
            low, high = view.x_range
            plt.xlim(low, high if high > low else low + 1)
            plt.xticks(view.x_ticks, [f"{t:,}" for t in view.x_ticks])
        if view.y_range is not None:
            plt.ylim(*view.y_range)
            plt.yticks(view.y_ticks, view.y_labels)
        # the train curve last: what is drawn later covers what was drawn before
        if view.val.xs:
            plt.scatter(view.val.xs, view.val.ys, marker=VAL_MARK, color=VAL_COLOR[0])
        if view.bleu.xs:
            plt.scatter(view.bleu.xs, view.bleu.ys, marker=BLEU_MARK, color=BLEU_COLOR[0],
                        yside="right")
            plt.ylim(view.bleu_ticks[0], view.bleu_ticks[-1], yside="right")
            plt.yticks(view.bleu_ticks, view.bleu_labels, yside="right")
        if view.train.xs:
            plt.plot(view.train.xs, view.train.ys, marker=TRAIN_MARK, color=TRAIN_COLOR[0])
        plot.refresh()
        for row in self.query(HistoryRow):
            row.show(state.history[row.history_name])
