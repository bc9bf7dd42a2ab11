"""The comparison of runs marked in the run list: train loss (smoothed) and validation loss on one
chart, BLEU on a second, each run in its colour and its marker shapes (tui/widgets/compare.py);
x by update or by tokens seen (x toggles: runs with different max_tokens compare fairly only by
tokens); under the charts the table of engine/compare.py (the config keys that differ, best
validation loss and BLEU, test BLEU, tokens/s, wall and CPU time, state).

A thread worker follows the runs (engine.compare.RunReader: only what each events.jsonl gained
is read): live runs a few times a second, finished, failed and dead runs once. Esc goes back to
the run list.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static
from textual.worker import get_current_worker
from textual_plotext import PlotextPlot

from engine.compare import ComparedRun, RunReader, table
from engine.errors import EngineError
from tui.messages import RunsCompared
from tui.widgets.compare import axis_subtitle, draw, legend, run_label
from tui.workers import wait_unless_cancelled

POLL_SECONDS = 0.25  # live runs: a few reads a second
STATE_STYLES = {"running": "bold green", "paused": "bold yellow", "stalled": "bold red",
                "dead": "bold red", "failed": "bold red", "finished": "green"}


class CompareScreen(Screen[None]):
    DEFAULT_CSS = """
    #compare { height: 1fr; }
    #compare-title { height: 1; text-style: bold; background: $panel; }
    #compare-legend { height: auto; max-height: 3; }
    #compare-charts { height: 1fr; min-height: 8; }
    #compare-loss { width: 3fr; border: round $primary; }
    #compare-bleu { width: 2fr; border: round $primary; }
    #compare-table { height: auto; max-height: 12; }
    """
    BINDINGS = [
        Binding("x", "toggle_axis", "x by update/tokens"),
        Binding("escape", "back", "Back to runs"),
    ]  # q (quit) is the app's

    def __init__(self, run_dirs: list[Path]) -> None:
        super().__init__()
        self.run_dirs = list(run_dirs)
        self.axis = "update"  # or "tokens"
        self.compared: list[ComparedRun] = []
        self.draws = 0  # charts drawn (for tests and the benchmark)

    def compose(self) -> ComposeResult:
        with Vertical(id="compare"):
            yield Static(f" Comparing {len(self.run_dirs)} runs · reading…", id="compare-title")
            yield Static(id="compare-legend")
            with Horizontal(id="compare-charts"):
                yield PlotextPlot(id="compare-loss")
                yield PlotextPlot(id="compare-bleu")
            yield DataTable(id="compare-table", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#compare-loss").border_title = (
            "Loss: train smoothed (small marks) · validation (large)")
        self.query_one("#compare-bleu").border_title = "BLEU (validation)"
        self.query_one(DataTable).focus()
        self.follow()

    @work(thread=True, group="compare", exclusive=True, exit_on_error=False)
    def follow(self) -> None:
        worker = get_current_worker()
        try:
            readers = [RunReader(run_dir) for run_dir in self.run_dirs]
        except EngineError as exc:
            self.post_message(RunsCompared([], error=str(exc)))
            return
        latest: list[ComparedRun | None] = [None] * len(readers)
        while not worker.is_cancelled:
            changed = False
            for i, reader in enumerate(readers):
                if worker.is_cancelled:  # (Esc while long runs are read)
                    return
                if latest[i] is not None and not latest[i].live:
                    continue  # finished, stopped, failed or dead: read once
                first = latest[i] is None
                run = reader.read()
                changed |= run is not latest[i]
                latest[i] = run
                if first and i < len(readers) - 1:  # long runs take seconds: show each read
                    self.post_message(RunsCompared(latest[:i + 1]))
                    changed = False
            if changed:
                self.post_message(RunsCompared(list(latest)))
            if not any(run.live for run in latest):
                return
            if wait_unless_cancelled(worker, POLL_SECONDS):
                return

    def on_runs_compared(self, message: RunsCompared) -> None:
        message.stop()
        title = self.query_one("#compare-title", Static)
        if message.error:
            title.update(Text(f" Cannot compare: {message.error}", style="bold red"))
            return
        self.compared = message.runs
        live = sum(run.live for run in self.compared)
        reading = len(self.compared) < len(self.run_dirs)
        title.update(f" Comparing {len(self.run_dirs)} runs"
                     + (f" · reading {len(self.compared) + 1} of {len(self.run_dirs)}…"
                        if reading else "")
                     + (f" · {live} live, following" if live else ""))
        self.query_one("#compare-legend", Static).update(legend(self.compared))
        self.draw_charts()
        self.draw_table()

    def draw_charts(self) -> None:
        loss, bleu = self.query_one("#compare-loss", PlotextPlot), \
            self.query_one("#compare-bleu", PlotextPlot)
        draw(loss, self.compared, self.axis, ("val", "train"), "no training yet")
        draw(bleu, self.compared, self.axis, ("bleu",), "no BLEU scored yet")
        loss.border_subtitle = bleu.border_subtitle = axis_subtitle(self.axis)
        self.draws += 1

    def draw_table(self) -> None:
        data = self.query_one(DataTable)
        headers, rows = table(self.compared)
        if [str(column.label) for column in data.columns.values()] != headers:
            data.clear(columns=True)
            data.add_columns(*headers)
        else:
            data.clear()
        for index, (name, state, *rest) in enumerate(rows):
            data.add_row(run_label(index, name), Text(state, style=STATE_STYLES.get(state, "")),
                         *rest)

    def on_resize(self) -> None:
        """The ticks fit the plots' height and the points their width: draw again, laid out."""
        if self.compared:
            self.call_after_refresh(self.draw_charts)

    def action_toggle_axis(self) -> None:
        self.axis = "tokens" if self.axis == "update" else "update"
        self.draw_charts()

    def action_back(self) -> None:
        self.dismiss(None)
