"""Log panel: the recent events as readable lines (progress events are not logged: the panels
show them; a merge loop would bury everything else)."""

from __future__ import annotations

from textual.widgets import RichLog

from tui.state import RunState
from tui.widgets.panel import StateView


class LogPanel(StateView, RichLog):
    parts = ("log",)

    def __init__(self, **kwargs) -> None:
        super().__init__(max_lines=1000, wrap=True, markup=False, min_width=20, **kwargs)
        self._written = 0

    def on_mount(self) -> None:
        self.border_title = "Log"

    def draw(self, state: RunState) -> None:
        new = state.log_total - self._written
        lines = list(state.log)[-new:] if new > 0 else []
        for line in lines:
            self.write(line)
        self._written = state.log_total
