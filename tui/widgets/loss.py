"""Loss curve: train loss per step (smoothed) and validation loss per epoch on one chart, BLEU on
a right-hand axis when the run computes it. Lines differ by marker, not only by colour."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static
from textual_plotext import PlotextPlot

from tui.format import number
from tui.state import RunState
from tui.widgets.panel import StateView, set_display, show_text


class LossPanel(StateView, Vertical):
    parts = ("loss",)
    min_seconds = 2.0  # a plotext chart costs ~10-20 ms to build; a curve of minutes needs no more

    def compose(self) -> ComposeResult:
        yield Static(id="loss-summary")
        yield PlotextPlot(id="loss-plot")

    def on_mount(self) -> None:
        self.border_title = "Loss"

    def draw(self, state: RunState) -> None:
        xs, ys = state.train_curve.points()
        summaries = state.summaries
        summary = Text(no_wrap=True, overflow="ellipsis")
        if ys:
            summary.append(f"train {number(ys[-1])} (smoothed) ")
        if summaries:
            last = summaries[-1]
            summary.append(f" val {number(last.val_loss)} (epoch {last.epoch})")
            bleus = [s for s in summaries if s.bleu is not None]
            if bleus:
                summary.append(f"  BLEU {bleus[-1].bleu:.2f}")
        if not ys and not summaries:
            summary.append("no training yet: the curve appears with the first batches", style="dim")
        show_text(self.query_one("#loss-summary", Static), summary)

        plot = self.query_one("#loss-plot", PlotextPlot)
        set_display(plot, bool(ys or summaries))
        plt = plot.plt
        plt.clear_data()
        plt.xlabel("step")
        if ys:
            plt.plot(xs, ys, marker="braille", label="train loss (smoothed)")
        if summaries:
            plt.plot([s.step for s in summaries], [s.val_loss for s in summaries],
                     marker="o", label="val loss")
            bleus = [s for s in summaries if s.bleu is not None]
            if bleus:
                plt.plot([s.step for s in bleus], [s.bleu for s in bleus], marker="+",
                         yside="right", label="BLEU")
        plot.refresh()
