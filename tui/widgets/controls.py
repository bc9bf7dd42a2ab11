"""The control bar. Before a start: choose the preset (a name or a TOML path), then Start; while
following a run (attached, or chosen in the list of runs): the run directory. Pause/Resume, Stop
and Quit always. Every button has a key (shown in the footer); buttons never take the focus, so
that Enter never presses Quit or Stop by accident."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Button, Input, Label, Select

from engine.config import PRESET_NAMES
from tui.state import Status

FILE_CHOICE = "file"
PICKER = ("#preset-label", "#preset", "#start")  # shown while choosing what to start


class ControlBar(Horizontal):
    def __init__(self, preset: str = "sample", **kwargs) -> None:
        super().__init__(**kwargs)
        self.initial_preset = preset
        self.picking = True  # False while following a run chosen elsewhere

    def compose(self) -> ComposeResult:
        is_name = self.initial_preset in PRESET_NAMES
        options = [(name, name) for name in PRESET_NAMES] + [("TOML file…", FILE_CHOICE)]
        yield Label("", id="attach-label")
        yield Label("Preset", id="preset-label")
        yield Select(options, value=self.initial_preset if is_name else FILE_CHOICE,
                     allow_blank=False, type_to_search=False, compact=True, id="preset")
        yield Input("" if is_name else self.initial_preset, placeholder="path/to/preset.toml",
                    compact=True, id="preset-path")
        yield Button("Start", id="start", action="screen.start", compact=True, variant="primary")
        yield Button("Pause", id="pause", action="screen.toggle_pause", compact=True, disabled=True)
        yield Button("Stop", id="stop", action="screen.stop", compact=True, variant="error",
                     disabled=True)
        yield Button("Quit", id="quit", action="app.quit", compact=True)

    def on_mount(self) -> None:
        for button in self.query(Button):
            button.can_focus = False  # keys do what buttons do; focus never rests on Quit
        self.pick()

    def pick(self) -> None:
        """Show the preset choice and Start."""
        self.picking = True
        for selector in PICKER:
            self.query_one(selector).display = True
        self.query_one("#attach-label").display = False
        self._show_path_input()

    def follow(self, run_dir: str) -> None:
        """Show the followed run directory instead of the preset choice."""
        self.picking = False
        for selector in (*PICKER, "#preset-path"):
            self.query_one(selector).display = False
        label = self.query_one("#attach-label", Label)
        label.update(f"Run {run_dir}   (l: all runs)")
        label.display = True

    def on_select_changed(self, event: Select.Changed) -> None:
        self._show_path_input()

    def _show_path_input(self) -> None:
        path_input = self.query_one("#preset-path", Input)
        path_input.display = self.picking and self.query_one("#preset", Select).value == FILE_CHOICE

    def preset(self) -> str:
        """The chosen preset: a name, or the path typed in the input."""
        choice = self.query_one("#preset", Select).value
        if choice == FILE_CHOICE:
            return self.query_one("#preset-path", Input).value.strip()
        return str(choice)

    def show_state(self, status: Status) -> None:
        for selector in ("#preset", "#preset-path", "#start"):
            self.query_one(selector).disabled = status.active
        pause = self.query_one("#pause", Button)
        pause.label = "Resume" if status == Status.PAUSED else "Pause"
        pause.disabled = status not in (Status.RUNNING, Status.PAUSED, Status.STALLED)
        self.query_one("#stop", Button).disabled = status not in (
            Status.STARTING, Status.RUNNING, Status.PAUSED, Status.STALLED)
