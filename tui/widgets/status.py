"""The status line: the run's state in words (never by colour alone), what runs, and for how long."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from tui.format import duration
from tui.state import DashboardState, Status
from tui.widgets.panel import StateView, show_text

BADGES = {
    Status.IDLE: ("○ IDLE", "bold"),
    Status.STARTING: ("◌ STARTING", "bold yellow"),
    Status.RUNNING: ("● RUNNING", "bold green"),
    Status.PAUSED: ("‖ PAUSED", "bold yellow"),
    Status.STOPPING: ("◌ STOPPING", "bold yellow"),
    Status.FINISHED: ("✓ FINISHED", "bold green"),
    Status.STOPPED: ("■ STOPPED", "bold"),
    Status.FAILED: ("✗ FAILED", "bold red"),
    Status.STALLED: ("◌ STALLED", "bold red"),
    Status.DEAD: ("✗ DEAD", "bold red"),
}


class StatusBar(StateView, Static):
    """One row, cut with an ellipsis when the terminal is narrow: the state, the elapsed time,
    then what runs where (the longest part, last)."""

    parts = ("status", "stages", "checkpoints")
    ticks = True

    def draw(self, state: DashboardState) -> None:
        label, style = BADGES.get(state.status, (state.status.upper(), "bold"))
        text = Text(no_wrap=True, overflow="ellipsis", end="")
        text.append(f" {label} ", style=f"{style} reverse")
        if state.status == Status.FAILED and state.reason:
            text.append(f" {state.reason}", style="bold")
            show_text(self, text)
            return
        elapsed = state.elapsed()
        if elapsed is not None:
            text.append(f" {duration(elapsed)}")
        stages = list(state.stages)
        if state.current_stage in stages and state.active:
            index = stages.index(state.current_stage) + 1
            text.append(f"  stage {index}/{len(stages)} {state.current_stage}")
        saved = state.stop_checkpoint()
        if state.status == Status.STOPPED and saved is not None:
            text.append(f"  state saved in {saved.name} (step {saved.step:,})", style="bold")
        elif state.status == Status.DEAD:
            text.append("  process gone" + (f" ({state.reason})" if state.reason else ""),
                        style="bold")
            if saved is not None:
                text.append(f"; last checkpoint {saved.name} (step {saved.step:,}): r resumes",
                            style="bold")
        if state.preset:
            text.append(f"  {state.preset} → {state.run_dir}")
            # what the run ran with, where the line has room for all of it (never cut)
            if state.ran_with and text.cell_len + 2 + len(state.ran_with) <= self.size.width:
                text.append(f"  {state.ran_with}", style="dim")
        elif state.run_dir:
            text.append(f"  {state.run_dir}")
        else:
            text.append("  choose a preset, then Start (s)")
        show_text(self, text)
