"""transformer-tui: the App. It routes between screens and holds the keys that work on every
screen; what it shows lives in tui/screens/ (one module per screen), the panels in tui/widgets/
and the command line in tui/cli.py.

Screens: the dashboard of one run (tui/screens/dashboard.py, the default screen, under every
other), the list of runs (tui/screens/runs.py: l, or at start without a run to show), the
comparison of runs marked there (tui/screens/compare.py) and the dialogs
(tui/screens/dialogs.py), each a screen that returns its answer by dismiss.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from textual.app import App
from textual.binding import Binding
from textual.screen import Screen
from textual.scrollbar import ScrollBar, ScrollBarRender

from engine.paths import RUNS_ROOT
from tui.messages import CompareRuns
from tui.screens.compare import CompareScreen
from tui.screens.dashboard import DashboardScreen
from tui.screens.runs import RunsScreen
from tui.state import DashboardState


class WholeCellScrollBar(ScrollBarRender):
    """Thumbs in whole cells: the eighth-block glyphs at a thumb's ends showed as stray
    characters in the log's scrollbar (tmux, SSH clients, fonts without them)."""

    VERTICAL_BARS = [" "] * 8
    HORIZONTAL_BARS = [" "] * 8


ScrollBar.renderer = WholeCellScrollBar  # every scrollbar of this app


class TransformerApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "transformer-tui"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [Binding("q", "quit", "Quit")]

    def __init__(self, preset: str = "sample", overrides: tuple[str, ...] | list[str] = (),
                 start: bool = False, attach: str | Path | None = None,
                 run_dir: str | Path | None = None, runs_dir: str | Path = RUNS_ROOT,
                 show_runs: bool = False, clock: Callable[[], float] = time.time,
                 probe: Any = None, probe_seconds: float = 2.0, refresh_hz: float = 4.0) -> None:
        """``attach``: the run directory to follow from the start; ``run_dir``: where a start
        writes (else ``runs_dir``/the preset's name); ``show_runs``: open on the list of runs;
        ``probe``: the memory panel's reader (anything with .sample() -> MemoryReading)."""
        super().__init__()
        self.runs_dir = Path(runs_dir)
        self.show_runs = show_runs
        self.dashboard = DashboardScreen(
            preset=preset, overrides=tuple(overrides), start=start,
            attach=Path(attach) if attach is not None else None,
            run_dir=Path(run_dir) if run_dir is not None else None, runs_dir=self.runs_dir,
            clock=clock, probe=probe, probe_seconds=probe_seconds, refresh_hz=refresh_hz)

    @property
    def state(self) -> DashboardState:
        """What the dashboard shows of its run (kept after the app exits: cli.py reads it)."""
        return self.dashboard.state

    def get_default_screen(self) -> Screen:
        return self.dashboard

    def on_mount(self) -> None:
        if self.show_runs:
            self.action_runs()

    def action_runs(self) -> None:
        """l: the runs under the runs directory; Enter attaches, n starts a new one."""
        def chosen(choice: Path | str | None) -> None:
            if isinstance(choice, Path):
                self.dashboard.attach_to(choice)
            elif choice == "new":
                self.dashboard.choose_new_run()

        self.push_screen(RunsScreen(self.runs_dir, followed=self.dashboard.followed), chosen)

    def on_compare_runs(self, message: CompareRuns) -> None:
        """c in the run list: the comparison of the marked runs, over the list (Esc: back)."""
        self.push_screen(CompareScreen(message.run_dirs))

    async def action_quit(self) -> None:
        """q: quit; the dashboard asks first when the run it follows is live."""
        self.dashboard.ask_to_quit()
