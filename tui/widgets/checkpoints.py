"""Checkpoints table: the run's checkpoints as they are saved; Enter on one offers to resume.

The cursor rests on checkpoint_last.pt (what a resume nearly always wants) until the user moves
it. Checkpoints that training.keep_last has since deleted are not rows: the hint counts them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import DataTable, Static
from textual.worker import get_current_worker

from engine.events import CheckpointSaved
from tui.format import clock_time, number, size
from tui.messages import EarlierCheckpoints
from tui.state import DashboardState
from tui.tail import EventTail
from tui.widgets.panel import StateView, show_text

COLUMNS = ("name", "epoch", "step", "val loss", "BLEU", "size", "saved at")
DEFAULT_ROW = "checkpoint_last.pt"  # engine.checkpoint.LAST (not imported: that pulls in torch)


def checkpoint_file(saved: CheckpointSaved, run_dir: str) -> Path:
    """Where the checkpoint is now: by name in the run dir shown, else its recorded path (the
    recorded path is relative to where the run was started, which may not be here)."""
    if run_dir and (Path(run_dir) / saved.name).is_file():
        return Path(run_dir) / saved.name
    return Path(saved.path)


class CheckpointsPanel(StateView, Vertical):
    parts = ("checkpoints",)

    @dataclass
    class ResumeRequested(Message):
        """Enter on a row: resume from this checkpoint (the dashboard asks first)."""

        saved: CheckpointSaved
        path: Path

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.run_dir = ""  # the followed run's dir (the dashboard sets it): checkpoints are there
        self._saved: dict[str, CheckpointSaved] = {}
        self.removed: list[str] = []  # saved by the run, deleted since (training.keep_last)
        self._cursor_chosen = False  # the user moved the cursor: leave it where they put it

    def compose(self) -> ComposeResult:
        table = DataTable(id="checkpoint-table", cursor_type="row", zebra_stripes=True)
        for column in COLUMNS:
            table.add_column(column, key=column)
        yield table
        yield Static("none yet: saved at the end of epochs and on stop", id="checkpoint-hint")

    def on_mount(self) -> None:
        self.border_title = "Checkpoints"

    def draw(self, state: DashboardState) -> None:
        table = self.query_one(DataTable)
        run_dir = self.run_dir or state.run_dir
        for name in [name for name in self._saved if name not in state.checkpoints]:
            table.remove_row(name)  # another run dir was chosen
            del self._saved[name]
            self._cursor_chosen = False
        moved = False
        removed = []
        for name, saved in sorted(state.checkpoints.items(), key=lambda item: item[1].step):
            if not checkpoint_file(saved, run_dir).is_file():
                removed.append(name)
                if name in self._saved:
                    table.remove_row(name)
                    del self._saved[name]
                continue
            moved = moved or name not in self._saved or self._saved[name].step != saved.step
            row = (name, str(saved.epoch), f"{saved.step:,}", number(saved.val_loss),
                   "—" if saved.bleu is None else f"{saved.bleu:.2f}",
                   size(saved.size_bytes), clock_time(saved.saved_at))
            if name in self._saved:
                for column, value in zip(COLUMNS, row):
                    table.update_cell(name, column, value)
            else:
                table.add_row(*row, key=name)
            self._saved[name] = saved
        self.removed = removed
        if moved:
            self._order_by_step(table)
        if not self._cursor_chosen and DEFAULT_ROW in self._saved:
            table.move_cursor(row=table.get_row_index(DEFAULT_ROW), animate=False)
        hint = "r or Enter on a row: resume from it" if self._saved else (
            "none yet: saved at the end of epochs and on stop")
        if removed:
            hint += f"  ({len(removed)} removed by keep_last)"
        show_text(self.query_one("#checkpoint-hint", Static), Text(hint))

    def _order_by_step(self, table: DataTable) -> None:
        """Rows by step, then name; the selected row stays selected."""
        selected = self.selected()
        table.sort(key=lambda row: (int(row[2].replace(",", "")), row[0]))
        if selected is not None:
            table.move_cursor(row=table.get_row_index(selected.name), animate=False)

    def selected(self) -> CheckpointSaved | None:
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        row = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        return self._saved.get(row.value)

    def request_resume(self) -> bool:
        """Ask to resume from the selected row (r, or Enter on it); False if there is none."""
        saved = self.selected()
        if saved is None:
            return False
        self.post_message(self.ResumeRequested(saved, checkpoint_file(saved, self.run_dir)))
        return True

    @work(thread=True, group="earlier", exclusive=True, exit_on_error=False)
    def read_earlier(self, run_dir: Path) -> None:
        """The checkpoints an earlier run left in ``run_dir``, from its events.jsonl."""
        worker = get_current_worker()
        tail, saved = EventTail(run_dir / "events.jsonl"), []
        while events := tail.read_new():  # the whole file, a piece at a time
            if worker.is_cancelled:  # another preset was chosen meanwhile
                return
            saved.extend(event for _, event in events if isinstance(event, CheckpointSaved))
        self.post_message(EarlierCheckpoints(str(run_dir), saved))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.has_focus:  # a key or click of the user's, not a redraw's
            self._cursor_chosen = True

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.request_resume()
