"""Stages panel: each stage pending / running / done / reused / failed, with its time."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from tui.format import duration
from tui.state import DashboardState
from tui.widgets.panel import StateView, show_text

MARKS = {
    "pending": ("·", "dim"),
    "running": ("▶", "bold"),
    "paused": ("‖", "bold yellow"),
    "done": ("✓", "green"),
    "reused": ("↺", "cyan"),
    "failed": ("✗", "bold red"),
    "stopped": ("■", "yellow"),
}


class StagesPanel(StateView, Static):
    parts = ("stages", "status")
    ticks = True

    def on_mount(self) -> None:
        self.border_title = "Stages"

    def draw(self, state: DashboardState) -> None:
        text = Text(no_wrap=True, overflow="ellipsis")
        for stage in state.stages.values():
            status = stage.status
            if status == "running" and stage.paused_at is not None:
                status = "paused"  # paused everywhere on screen: the row and its clock
            mark, style = MARKS.get(status, ("?", ""))
            seconds = state.stage_seconds(stage)
            took = duration(seconds) if seconds is not None else ""
            line = Text(f"{mark} {stage.name:<10}{status:<8}{took:>7}")
            line.stylize(style, 0, 2)  # the mark and its space: an SVG export keeps the space
            if stage.name == state.current_stage and status == "running":
                line.stylize("reverse bold")  # the current stage stands out without colour
            text.append_text(line)
            text.append("\n")
        text.rstrip()
        show_text(self, text)
