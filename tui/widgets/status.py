"""The status line: the run's state in words (never by colour alone), what runs, and for how long."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from tui.format import duration
from tui.state import RunState
from tui.widgets.panel import StateView, show_text

BADGES = {
    "idle": ("○ IDLE", "bold"),
    "starting": ("◌ STARTING", "bold yellow"),
    "running": ("● RUNNING", "bold green"),
    "paused": ("‖ PAUSED", "bold yellow"),
    "stopping": ("◌ STOPPING", "bold yellow"),
    "finished": ("✓ FINISHED", "bold green"),
    "stopped": ("■ STOPPED", "bold"),
    "failed": ("✗ FAILED", "bold red"),
}


class StatusBar(StateView, Static):
    parts = ("status", "stages")
    ticks = True

    def __init__(self, attach: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.attach = attach

    def draw(self, state: RunState) -> None:
        label, style = BADGES.get(state.status, (state.status.upper(), "bold"))
        text = Text()
        text.append(f" {label} ", style=f"{style} reverse")
        if state.status == "failed" and state.reason:
            text.append(f" {state.reason}", style="bold")
            show_text(self, text)
            return
        if self.attach:
            text.append(f"  attached, read-only: {self.attach}")
        elif state.preset:
            text.append(f"  {state.preset} → {state.run_dir}")
        else:
            text.append("  choose a preset, then Start (s)")
        stages = list(state.stages)
        if state.current_stage in stages:
            index = stages.index(state.current_stage) + 1
            text.append(f"  stage {index}/{len(stages)} {state.current_stage}")
        elapsed = state.elapsed()
        if elapsed is not None:
            text.append(f"  {duration(elapsed)}")
        show_text(self, text)
