"""What every panel shares: draw from the state only when the part it shows has changed."""

from __future__ import annotations

import time

from rich.text import Text
from textual.widget import Widget
from textual.widgets import Static

from tui.state import DashboardState


class StateView:
    """Mixin for a widget that shows ``parts`` of a DashboardState.

    ``update_from`` is called by the dashboard's refresh timer (a few times a second, however many
    events arrived); it draws only if one of the parts changed (at most every ``min_seconds``), or
    once a second while a run is active for panels with a live clock (``ticks``). Each draw costs
    the UI thread a few milliseconds, during which keys wait.
    """

    parts: tuple[str, ...] = ()
    ticks = False  # shows a clock that moves while a run is active
    min_seconds = 0.0  # between two draws: what changes faster is shown at this pace

    def update_from(self, state: DashboardState, force: bool = False) -> bool:
        seen = tuple(state.versions[part] for part in self.parts)
        now = time.monotonic()
        since = now - getattr(self, "_drawn_at", 0.0)
        tick_due = self.ticks and state.active and since >= 1.0
        # after a resize (a page shown at 80x24) the panel draws at its new size at once,
        # whatever min_seconds says: the chart appeared ~2 s after its page key
        resized = getattr(self, "_seen", 0) is None
        if not force and not tick_due and not resized and (
                seen == getattr(self, "_seen", None) or since < self.min_seconds):
            return False
        self._seen = seen
        self._drawn_at = now
        self.draw(state)
        self.draws = getattr(self, "draws", 0) + 1  # for tests: redraws stay bounded
        return True

    def draw(self, state: DashboardState) -> None:
        raise NotImplementedError

    def on_resize(self) -> None:
        self._seen = None  # bars fit the width: draw again at the next refresh


def show_text(widget: Static, text: Text) -> None:
    """Replace a Static's text; lay the screen out again only when its line count changed
    (a layout pass costs milliseconds of the UI thread, and the GIL, a few times a second)."""
    lines = text.plain.count("\n") + 1
    changed = getattr(widget, "_shown_lines", None) != lines
    widget._shown_lines = lines
    widget.update(text, layout=changed)


def set_display(widget: Widget, shown: bool) -> None:
    if widget.display != shown:  # setting it at all would ask for a layout
        widget.display = shown
