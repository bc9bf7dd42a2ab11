"""Training panel: epoch and batch progress, loss and its running average, LR, speed, ETAs."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from tui.format import bar_line, count, duration, number, percent, rate
from tui.state import DashboardState, Status
from tui.widgets.panel import StateView, show_text


class TrainingPanel(StateView, Static):
    parts = ("training", "status")  # paused and ended read differently
    min_seconds = 0.5

    def on_mount(self) -> None:
        self.border_title = "Training"

    def draw(self, state: DashboardState) -> None:
        b = state.batch
        text = Text(no_wrap=True, overflow="ellipsis")
        if b is None:
            text.append("waiting for the train stage", style="dim")
            show_text(self, text)
            return
        width = self.content_size.width or 40
        text.append(f"Epoch  {b.epoch}/{b.epochs}   batch {count(b.batch)}/{count(b.batches)}\n")
        text.append(bar_line("       ", b.batch / b.batches if b.batches else None,
                             percent(b.batch, b.batches), width) + "\n")
        text.append(f"Loss   {number(b.loss)}  avg {number(b.avg_loss)}\n")
        text.append(f"LR     {b.lr:.6f}  step {count(b.step)}\n")
        if state.status == Status.PAUSED:  # the last numbers would read as the present
            text.append("Speed  paused\nETA    paused")
        else:
            text.append(f"Speed  {rate(b.batches_per_second, 'batch')}  "
                        f"{rate(b.tokens_per_second, 'tok')}\n")
            saved = state.stop_checkpoint()
            if state.active:
                text.append(f"ETA    epoch {duration(b.eta)}  run {duration(state.run_eta())}")
            elif state.status == Status.STOPPED and saved is not None:
                text.append(f"Saved  {saved.name} step {count(saved.step)}", style="bold")
            else:
                text.append(f"Ended  {state.status} in epoch {b.epoch}")
        if state.skipped:
            text.append(f"  skipped {state.skipped}", style="bold")
        if state.summaries:
            s = state.summaries[-1]
            bleu = f"  BLEU {s.bleu:.2f}" if s.bleu is not None else ""
            text.append(f"\nVal    {number(s.val_loss)} ppl {s.val_ppl:.2f}{bleu}")
        show_text(self, text)
