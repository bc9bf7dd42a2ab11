"""The list of runs under the runs directory (saved/ by default): what `transformer-tui` opens on.

One row per run directory (engine.runs.list_runs): name, preset, state (running, paused, stalled,
finished, stopped, failed, dead), epoch and step, the last validation loss and BLEU, when the
run last said something, and the last alert it raised (engine/alerts.py). Read off the UI thread
every few seconds, so that a run that dies shows as dead while the list is open. Enter attaches
to the selected run (pause, resume, stop from there); space marks it (a ✓ in the first
column) and c compares the marked runs (tui/screens/compare.py, routed by the app); n goes to
the preset picker to start a new one; q quits.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static
from textual.worker import get_current_worker

from engine import runs
from engine.errors import EngineError
from tui.format import duration, number
from tui.messages import CompareRuns, RunsListed
from tui.workers import wait_unless_cancelled

COLUMNS = ("run", "preset", "state", "epoch", "step", "val loss", "BLEU", "last event",
           "last alert")
ALERT_WIDTH = 48  # the last alert's text is cut to this in its column
LIST_SECONDS = 3.0
MARK, MARK_COLUMN = "✓", "marked"  # a run marked for comparison (space), in its own column
STATE_STYLES = {"running": "bold green", "paused": "bold yellow", "stalled": "bold red",
                "dead": "bold red", "failed": "bold red", "finished": "green"}


class RunsScreen(Screen[Path | str | None]):
    """Dismissed with the chosen run's directory, "new", or None (Esc: back)."""

    BINDINGS = [
        Binding("enter", "attach", "Attach", priority=True),
        Binding("space", "mark", "Mark"),
        Binding("c", "compare", "Compare marked"),
        Binding("n", "new", "New run"),
        Binding("escape", "back", "Back"),
    ]  # q (quit) is the app's

    def __init__(self, root: Path, followed: Path | None = None) -> None:
        super().__init__()
        self.root = root
        self.followed = followed
        self.summaries: dict[str, runs.RunSummary] = {}
        self.marked: list[str] = []  # run directories marked for comparison, in marking order

    def compose(self) -> ComposeResult:
        with Vertical(id="runs"):
            yield Static(f" Runs in {self.root}/", id="runs-title")
            table = DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
            # the mark first: the last-alert column pushed a mark at the end off a 120-column screen
            table.add_column(MARK, key=MARK_COLUMN)
            for column in COLUMNS:
                table.add_column(column, key=column)
            yield table
            yield Static("reading…", id="runs-hint")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DataTable).focus()
        self.list_runs()

    @work(thread=True, group="runs", exclusive=True, exit_on_error=False)
    def list_runs(self) -> None:
        worker = get_current_worker()
        while not worker.is_cancelled:
            try:
                summaries = runs.list_runs(self.root)
            except (OSError, EngineError):
                summaries = []
            self.post_message(RunsListed(summaries))
            if wait_unless_cancelled(worker, LIST_SECONDS):
                return

    def on_runs_listed(self, message: RunsListed) -> None:
        message.stop()
        table = self.query_one(DataTable)
        summaries = sorted(message.summaries, key=lambda s: s.last_event_at or 0.0, reverse=True)
        keys = [str(s.run_dir) for s in summaries]
        if keys != list(self.summaries):  # rows come and go: build the table again
            selected = self.selected()
            table.clear()
            for summary in summaries:
                table.add_row("", *_row(summary), key=str(summary.run_dir))  # mark: show_marks
            wanted = selected or self.followed
            if wanted is not None and str(wanted) in keys:
                table.move_cursor(row=keys.index(str(wanted)), animate=False)
        else:
            for summary in summaries:
                for column, value in zip(COLUMNS, _row(summary)):
                    table.update_cell(str(summary.run_dir), column, value)
        self.summaries = {str(s.run_dir): s for s in summaries}
        self.marked = [key for key in self.marked if key in self.summaries]
        self.show_marks()
        # short enough for 80 columns (the footer names the keys too)
        hint = (f"{len(summaries)} run(s): Enter attach · space mark · c compare marked · n new"
                ) if summaries else f"No runs in {self.root}/ yet. n: choose a preset, start one"
        self.query_one("#runs-hint", Static).update(hint)

    def selected(self) -> Path | None:
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return Path(key) if key is not None else None

    def action_attach(self) -> None:
        run_dir = self.selected()
        if run_dir is not None:
            self.dismiss(run_dir)

    def show_marks(self) -> None:
        """A mark in the first column of each run marked for comparison (a shape, not a colour:
        NO_COLOR reads it)."""
        table = self.query_one(DataTable)
        for key in self.summaries:
            mark = MARK if key in self.marked else ""
            if table.get_cell(key, MARK_COLUMN) != mark:
                table.update_cell(key, MARK_COLUMN, mark)

    def action_mark(self) -> None:
        """space: mark or unmark the selected run for comparison."""
        run_dir = self.selected()
        if run_dir is None:
            return
        key = str(run_dir)
        if key in self.marked:
            self.marked.remove(key)
        else:
            self.marked.append(key)
        self.show_marks()

    def action_compare(self) -> None:
        """c: compare the marked runs (two or more)."""
        if len(self.marked) < 2:
            self.notify(f"{len(self.marked)} run marked: mark two or more with space, then c "
                        "to compare them", title="Compare", severity="warning")
            return
        self.post_message(CompareRuns([Path(key) for key in self.marked]))

    def action_new(self) -> None:
        self.dismiss("new")

    def action_back(self) -> None:
        self.dismiss(None)


def _row(s: runs.RunSummary) -> tuple:
    state = Text(s.state.value, style=STATE_STYLES.get(s.state.value, ""))
    epoch = f"{s.epoch}/{s.epochs}" if s.epochs else "—"
    bleu = "—" if s.bleu is None else f"{s.bleu:.2f}"
    return (s.name, s.preset or "—", state, epoch, f"{s.step:,}", number(s.val_loss), bleu,
            _ago(s.last_event_at), _clip(s.last_alert, ALERT_WIDTH) or "—")


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _ago(at: float | None) -> str:
    if at is None:
        return "—"
    return f"{duration(max(0.0, time.time() - at))} ago"
