"""transformer-tui: the App. Lays out the panels, binds the keys, and routes what arrives (engine
events, worker messages, key actions) to the RunState and the panels. The command line is in
tui/cli.py.

The app is a client of the run directory: whether it started the run or attaches to one
(``--attach``), it follows the run's events.jsonl (the whole history, then what is appended) in a
thread worker that puts events into an EventInbox, which posts one message per burst to the app;
the app applies every event to a RunState and a timer redraws the panels a few times a second,
so a fast merge loop never floods the UI. A run started here runs in a thread worker.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Container, Vertical
from textual.widgets import Footer, Input, Select, Static, Tab, Tabs
from textual.worker import get_current_worker

from engine import pipeline
from engine.config import PRESET_NAMES, RunConfig, load_config
from engine.control import RunControl
from engine.errors import EngineError
from tui.inbox import EventInbox
from tui.messages import EarlierCheckpoints, EventsWaiting, MemoryRead, RunEnded
from tui.state import RunState, Status
from tui.tail import EventTail
from tui.widgets.checkpoints import CheckpointsPanel
from tui.widgets.controls import ControlBar
from tui.widgets.dialogs import ConfirmScreen
from tui.widgets.log import LogPanel
from tui.widgets.loss import LossPanel
from tui.widgets.memory import MemoryPanel
from tui.widgets.panel import StateView
from tui.widgets.stages import StagesPanel
from tui.widgets.status import StatusBar
from tui.widgets.tokenizer import TokenizerPanel
from tui.widgets.training import TrainingPanel
from tui.workers import wait_unless_cancelled

MIN_SIZE = (80, 24)  # below this the app says the terminal is too small
COMPACT_BELOW = (110, 34)  # below this width or height, one page of panels at a time
PAGES = ("run", "loss", "checkpoints", "log")  # compact pages; memory is on "run"
EVENTS_PER_TURN = 2000  # events applied per UI turn when replaying a long events.jsonl
STOPPABLE = (Status.STARTING, Status.RUNNING, Status.PAUSED)


class TransformerApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "transformer-tui"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("s", "start", "Start"),
        Binding("p", "toggle_pause", "Pause/Resume"),
        Binding("x", "stop", "Stop"),
        Binding("r", "resume_checkpoint", "Resume from checkpoint", show=False),
        Binding("q", "quit", "Quit"),
        Binding("ctrl+s", "screenshot", "Screenshot", show=False),
        *(Binding(str(i), f"page('{page}')", page.capitalize(), show=False)
          for i, page in enumerate(PAGES, start=1)),
    ]

    def __init__(self, preset: str = "sample", overrides: tuple[str, ...] | list[str] = (),
                 start: bool = False, attach: str | Path | None = None,
                 run_dir: str | Path | None = None, clock: Callable[[], float] = time.time,
                 probe: Any = None, probe_seconds: float = 2.0, refresh_hz: float = 4.0) -> None:
        super().__init__()
        self.preset = preset
        self.overrides = tuple(overrides)
        self.start_at_once = start
        self.attach = str(attach) if attach is not None else None
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.clock = clock
        self.probe = probe  # for the memory panel: anything with .sample() -> MemoryReading
        self.probe_seconds = probe_seconds
        self.refresh_hz = refresh_hz
        self.state = RunState(clock=clock)
        self.inbox = EventInbox(lambda: self.post_message(EventsWaiting()), clock=clock)
        self.control: RunControl | None = None
        self.tail: EventTail | None = None  # the events.jsonl followed
        self.config: RunConfig | None = None
        self._quit_when_done = False
        self._seen_status = -1
        self._dashboard_ready = False

    # --- layout ---

    def compose(self) -> ComposeResult:
        attached = self.attach is not None
        with Vertical(id="dashboard"):
            yield StatusBar(attach=self.attach, id="status")
            yield ControlBar(preset=self.preset, attached=self.attach, id="controls")
            yield Tabs(*(Tab(f"{i} {page.capitalize()}", id=page)
                         for i, page in enumerate(PAGES, start=1)), id="pages")
            with Container(id="main", classes="-page-run"):
                yield StagesPanel(id="stages", classes="panel page-run")
                yield TokenizerPanel(id="tokenizer", classes="panel page-run")
                yield TrainingPanel(id="training", classes="panel page-run")
                yield LossPanel(id="loss", classes="panel page-loss")
                yield MemoryPanel(attached=attached, probe=self.probe,
                                  probe_seconds=self.probe_seconds, id="memory",
                                  classes="panel page-run")
                yield CheckpointsPanel(attached_dir=self.attach or "", id="checkpoints",
                                       classes="panel page-checkpoints")
                yield LogPanel(id="log", classes="panel page-log")
            yield Static(id="too-small")
        yield Footer()

    def on_mount(self) -> None:
        self.dashboard = self.query_one("#dashboard")
        self.controls = self.query_one(ControlBar)
        self.query_one("#pages", Tabs).can_focus = False  # the keys 1-4 choose pages
        self.panels: list[StateView] = [w for w in self.query("*") if isinstance(w, StateView)]
        self.fit_to(self.size.width, self.size.height)
        self.set_interval(1 / self.refresh_hz, self.refresh_panels)
        if self.attach is not None:
            self._start_attach()
        else:
            self.query_one("#preset").focus()
            if self.start_at_once:
                self.action_start()
            else:
                self.look_for_earlier_run()
        self._dashboard_ready = True
        self.refresh_panels(force=True)

    def on_resize(self, event: Any) -> None:
        if self._dashboard_ready:  # the first Resize comes before on_mount
            self.fit_to(event.size.width, event.size.height)

    def fit_to(self, width: int, height: int) -> None:
        too_small = width < MIN_SIZE[0] or height < MIN_SIZE[1]
        compact = width < COMPACT_BELOW[0] or height < COMPACT_BELOW[1]
        self.dashboard.set_class(too_small, "-too-small")
        self.dashboard.set_class(compact and not too_small, "-compact")
        self.query_one("#too-small", Static).update(
            f"Terminal too small: {width}x{height}.\n"
            f"transformer-tui needs at least {MIN_SIZE[0]}x{MIN_SIZE[1]}; "
            f"it looks best at {COMPACT_BELOW[0]}x{COMPACT_BELOW[1]} or larger.\n"
            "The run goes on; enlarge the window, or press q to quit.")

    @on(Tabs.TabActivated, "#pages")
    def _page_chosen(self, event: Tabs.TabActivated) -> None:
        if event.tab.id == event.tabs.active:  # not a stale one, overtaken by a later key
            self.show_page(event.tab.id)

    def action_page(self, page: str) -> None:
        self.show_page(page)  # at once; the tab bar follows
        self.query_one("#pages", Tabs).active = page

    def show_page(self, page: str) -> None:
        main = self.query_one("#main")
        for name in PAGES:
            main.set_class(name == page, f"-page-{name}")
        self.focus_page(page)

    def focus_page(self, page: str | None = None) -> None:
        """Focus the page's main widget: the checkpoint table, the log, or (on the run page,
        before a start) the preset choice. Buttons never take focus: keys do what they do."""
        page = page or next((name for name in PAGES
                             if self.query_one("#main").has_class(f"-page-{name}")), "run")
        if page == "checkpoints":
            self.query_one("#checkpoint-table").focus()
        elif page == "log":
            self.query_one(LogPanel).focus()
        elif page == "run" and self.attach is None and not self.state.active:
            self.query_one("#preset").focus()
        else:
            self.set_focus(None)

    # --- events in, panels out ---

    def on_events_waiting(self, message: EventsWaiting) -> None:
        self._apply_events(limit=EVENTS_PER_TURN)

    def _apply_events(self, limit: int | None = None) -> None:
        for at, event in self.inbox.take(limit=limit):
            self.state.apply(event, at)
        self._show_status()  # a change of state shows at once, not at the next refresh

    def refresh_panels(self, force: bool = False) -> None:
        """Redraw what changed; called by a timer, so the redraw rate is bounded."""
        for panel in self.panels:
            panel.update_from(self.state, force)
        self._show_status()

    def _show_status(self) -> None:
        if self.state.versions["status"] != self._seen_status:
            self._seen_status = self.state.versions["status"]
            self.query_one(StatusBar).update_from(self.state)
            self.controls.show_state(self.state.status)
            self.refresh_bindings()

    def on_memory_read(self, message: MemoryRead) -> None:
        self.state.set_reading(message.reading)

    # --- a run in this process ---

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        status = self.state.status
        if isinstance(self.screen, ConfirmScreen) and action in (
                "start", "toggle_pause", "stop", "quit", "page", "resume_checkpoint"):
            return False  # a question is open: answer it first
        if action in ("start", "toggle_pause", "stop", "resume_checkpoint") \
                and self.attach is not None:
            return False  # read-only: not shown at all
        if action == "start":
            return None if self.state.active else True
        if action == "toggle_pause":
            return True if status in (Status.RUNNING, Status.PAUSED) else None
        if action == "stop":
            return True if status in STOPPABLE else None
        return True

    def action_start(self) -> None:
        if self.attach is not None or self.state.active:
            return
        preset = self.controls.preset()
        if not preset:
            self._config_failed("no preset: type the path of a .toml file, or choose one of "
                                + ", ".join(PRESET_NAMES))
            return
        try:
            config = load_config(preset, self.overrides)
        except EngineError as exc:
            self._config_failed(str(exc))
            return
        run_dir = self.run_dir or Path("saved") / config.name
        if not (run_dir / "events.jsonl").is_file():
            self._launch(config, run_dir)
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._launch(config, run_dir)

        self.push_screen(ConfirmScreen(
            f"Start over in {run_dir}?\nAn earlier run lives there: its checkpoints will be "
            "replaced. To continue it instead, resume from a checkpoint (3, then r).",
            yes="Start over"), answered)

    def _config_failed(self, message: str) -> None:
        self.state.config_error(message)
        self.notify(message, title="Cannot start", severity="error", timeout=10)
        self.refresh_panels()

    def _launch(self, config: RunConfig, run_dir: Path, resume: str | None = None) -> None:
        self.config = config
        self.control = control = RunControl()
        self.state.starting(config.name, str(run_dir), config.training.max_tokens)
        overrides = f" with {' '.join(self.overrides)}" if self.overrides else ""
        self.state.note(f"starting {config.name} ({config.source}){overrides}"
                        + (f", resuming from {resume}" if resume else ""))
        events = run_dir / "events.jsonl"
        if self.tail is None or self.tail.path != events:
            # a resume shows the run's whole history; a fresh start only its own events
            self.follow(events, from_end=resume is None)
        self.run_engine(config, run_dir, control, resume)
        self.focus_page()  # never a button: Enter must not quit or stop by accident
        self.refresh_panels()

    @work(thread=True, group="engine", exit_on_error=False)
    def run_engine(self, config: RunConfig, run_dir: Path, control: RunControl,
                    resume: str | None) -> None:
        """The engine's thread. Its failures arrive as RunFailed events; what escapes run()
        itself (an unwritable run dir) still ends the run as failed, never the app."""
        try:
            # the events reach the app through events.jsonl, as from a run elsewhere
            status = Status(pipeline.run(config, run_dir, lambda event: None, control=control,
                                         resume=resume))
            reason = ""
        except Exception as exc:
            status, reason = Status.FAILED, f"{type(exc).__name__}: {exc}"
        self.post_message(RunEnded(status, reason))

    def on_run_ended(self, message: RunEnded) -> None:
        self._read_to_end()  # whatever the engine wrote last, first
        self.state.ended(message.status, message.reason)
        self.control = None
        self.refresh_panels()
        if self._quit_when_done:
            self.exit()

    @on(Input.Submitted, "#preset-path")
    def _path_submitted(self) -> None:
        self.action_start()

    @on(Select.Changed, "#preset")
    def _preset_changed(self) -> None:
        self.look_for_earlier_run()

    def look_for_earlier_run(self) -> None:
        """Offer the checkpoints an earlier run of the chosen preset left in its run dir."""
        if self.state.active or self.state.started_at is not None:
            return
        try:
            config = load_config(self.controls.preset() or "sample", self.overrides)
        except EngineError:
            return  # said when the user starts
        self.query_one(CheckpointsPanel).read_earlier(self.run_dir or Path("saved") / config.name)

    def on_earlier_checkpoints(self, message: EarlierCheckpoints) -> None:
        self.state.earlier_checkpoints(message.run_dir, message.saved)

    def action_toggle_pause(self) -> None:
        if self.control is None:
            return
        if self.state.status == Status.RUNNING:
            self.control.pause()
        elif self.state.status == Status.PAUSED:
            self.control.resume()

    def action_stop(self) -> None:
        if self.control is None or self.state.status not in STOPPABLE:
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._request_stop()

        self.push_screen(ConfirmScreen("Stop the run?\nIt stops at the next safe point and saves "
                                       "checkpoint_last.pt, so it can be resumed.",
                                       yes="Stop"), answered)

    def _request_stop(self) -> None:
        if self.control is not None:
            self.state.stopping()
            self.control.stop()
            self.refresh_panels()

    async def action_quit(self) -> None:
        if not self.state.active or self.attach is not None:
            self.exit()
            return

        def answered(yes: bool | None) -> None:
            if not yes:
                return
            if not self.state.active:  # the run ended while the question was open
                self.exit()
                return
            if self.state.status == Status.STOPPING and self._quit_when_done:
                self.exit()  # asked twice: leave now, the engine finishes stopping on its own
                return
            self._quit_when_done = True
            self._request_stop()
            self.notify("Stopping the run (saving a checkpoint), then quitting…")

        if self.state.status == Status.STOPPING and self._quit_when_done:
            question = "The run is still stopping.\nQuit now without waiting for it?"
        else:
            question = "A run is active.\nStop it (a checkpoint is saved) and quit?"
        self.push_screen(ConfirmScreen(question, yes="Quit"), answered)

    def action_resume_checkpoint(self) -> None:
        """r: resume from the checkpoint selected in the table (asks first)."""
        panel = self.query_one(CheckpointsPanel)
        if not panel.request_resume():
            self.notify("No checkpoint to resume from yet (3 shows the checkpoints).",
                        severity="warning")

    def action_screenshot(self) -> None:
        """ctrl+s: the screen as an SVG file in the run directory (else here)."""
        folder = Path(self.attach or self.state.run_dir or ".")
        name = time.strftime("screenshot-%Y%m%d-%H%M%S.svg", time.localtime(self.clock()))
        try:
            path = self.save_screenshot(name, path=str(folder))
        except OSError as exc:
            self.notify(f"Cannot save a screenshot in {folder}: {exc}", severity="error")
            return
        self.notify(f"Screenshot saved: {path}")

    @on(CheckpointsPanel.ResumeRequested)
    def _resume_requested(self, event: CheckpointsPanel.ResumeRequested) -> None:
        saved, path = event.saved, event.path
        if self.attach is not None:
            self.notify("Attached read-only: resume this run from the app without --attach.",
                        severity="warning")
            return
        if self.state.active:
            self.notify("Stop the run before resuming from a checkpoint.", severity="warning")
            return
        if not path.is_file():
            self.notify(f"{path} no longer exists.", severity="error")
            return
        if self.config is None:
            try:
                self.config = load_config(self.controls.preset() or "sample", self.overrides)
            except EngineError as exc:
                self._config_failed(str(exc))
                return
        config = self.config

        def answered(yes: bool | None) -> None:
            if yes:
                self._launch(config, path.parent, resume=str(path))

        self.push_screen(ConfirmScreen(
            f"Resume from {saved.name}?\nepoch {saved.epoch}, step {saved.step:,}, "
            f"preset {config.name}, in {path.parent}", yes="Resume"), answered)

    # --- following a run started elsewhere ---

    def _start_attach(self) -> None:
        run_dir = Path(self.attach)
        if not run_dir.is_dir():
            self.state.config_error(f"--attach {self.attach}: no such run directory")
            return
        self.state.note(f"attached to {run_dir / 'events.jsonl'} (read-only)")
        self.state.max_tokens = _config_max_tokens(run_dir / "config.toml")
        self.query_one("#checkpoint-table").focus()
        self.follow(run_dir / "events.jsonl")

    def follow(self, path: Path, from_end: bool = False) -> None:
        self.tail = EventTail(path, from_end=from_end)
        self.follow_events(self.tail)

    @work(thread=True, group="tail", exclusive=True, exit_on_error=False)
    def follow_events(self, tail: EventTail) -> None:
        """Read the file from where the tail is, then what is appended, until cancelled."""
        worker = get_current_worker()
        while not worker.is_cancelled:
            events = tail.read_new()
            if events:
                now = self.clock()
                self.inbox.put_many([(now if at is None else at, event) for at, event in events])
            elif wait_unless_cancelled(worker, 0.25):
                return

    def _read_to_end(self) -> None:
        """On the UI thread: what the followed file holds that the worker has not read yet."""
        while self.tail is not None and (events := self.tail.read_new()):
            now = self.clock()
            self.inbox.put_many([(now if at is None else at, event) for at, event in events])
        self._apply_events()

    def on_unmount(self) -> None:
        # The engine's thread must end for the process to exit: ask it to stop cleanly.
        if self.control is not None:
            self.control.stop()


def _config_max_tokens(path: Path) -> int | None:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        return int(tomllib.loads(path.read_text(encoding="utf-8"))["training"]["max_tokens"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def main(argv: list[str] | None = None) -> int:
    """The console script `transformer-tui` (kept here for installs that name tui.app:main)."""
    from tui.cli import main as cli_main  # tui.cli imports this module

    return cli_main(argv)
