"""Log panel: the recent events as readable lines (progress events are not logged: the panels
show them; a merge loop would bury everything else).

A RichLog wraps a line when it is written, at the width it has then. Lines are therefore written
only while the panel is shown, and all kept lines are written again when its width changes (a
page switch at 80x24, a resize): never wrapped at the width of a hidden panel."""

from __future__ import annotations

from textual.widgets import RichLog

from tui.state import DashboardState
from tui.widgets.panel import StateView


class LogPanel(StateView, RichLog):
    parts = ("log",)

    def __init__(self, **kwargs) -> None:
        super().__init__(max_lines=1000, wrap=True, markup=False, **kwargs)
        self._written = 0  # state.log_total when last written
        self._width = 0  # the width the lines on screen were wrapped at

    def on_mount(self) -> None:
        self.border_title = "Log"

    def draw(self, state: DashboardState) -> None:
        width = self.scrollable_content_region.width
        if width <= 0 or not self.display:
            self._seen = None  # hidden: write when shown (on_resize asks again)
            return
        if width != self._width:
            self.clear()
            self._written = state.log_total - len(state.log)
            self._width = width
        new = state.log_total - self._written
        for line in list(state.log)[-new:] if new > 0 else []:
            self.write(line, width=width)
        self._written = state.log_total
