"""transformer-tui: the App. Lays out the panels, binds the keys, and routes what arrives (run
events, worker messages, key actions) to the RunState and the panels. The command line is in
tui/cli.py, the list of runs in tui/widgets/runs.py.

The app is a client of a run directory (engine/runs.py): it starts every run as a detached run
process (its own session, so that it outlives the terminal), follows the run's events.jsonl
(the whole history, then what is appended) in a thread worker, and steers through the run's
control channel (pause, resume, stop). Attaching to a run started elsewhere is the same. A second
worker watches the run process (lock and heartbeat): a run whose process is gone without an end
event shows as dead. Events go into an EventInbox, which posts one message per burst; the app
applies every event to a RunState and a timer redraws the panels a few times a second.
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

from engine import runs
from engine.config import PRESET_NAMES, RunConfig, load_config
from engine.errors import EngineError
from tui.inbox import EventInbox
from tui.messages import EarlierCheckpoints, EventsWaiting, MemoryRead, ProcessSeen
from tui.rundir import config_max_tokens, last_line, reap_child, who_holds
from tui.state import RunState, Status
from tui.tail import EventTail
from tui.widgets.checkpoints import CheckpointsPanel
from tui.widgets.controls import ControlBar
from tui.widgets.dialogs import ChoiceScreen, ConfirmScreen
from tui.widgets.log import LogPanel
from tui.widgets.loss import LossPanel
from tui.widgets.memory import MemoryPanel
from tui.widgets.panel import StateView
from tui.widgets.runs import RunsScreen
from tui.widgets.stages import StagesPanel
from tui.widgets.status import StatusBar
from tui.widgets.tokenizer import TokenizerPanel
from tui.widgets.training import TrainingPanel
from tui.workers import wait_unless_cancelled

MIN_SIZE = (80, 24)  # below this the app says the terminal is too small
COMPACT_BELOW = (110, 34)  # below this width or height, one page of panels at a time
PAGES = ("run", "loss", "checkpoints", "log")  # compact pages; memory is on "run"
EVENTS_PER_TURN = 2000  # events applied per UI turn when replaying a long events.jsonl
STOPPABLE = (Status.STARTING, Status.RUNNING, Status.PAUSED, Status.STALLED)
PAUSABLE = (Status.RUNNING, Status.PAUSED, Status.STALLED)
PROCESS_SECONDS = 3.0  # between two looks at the run process (dead within 30 s: well within)
DASHBOARD_ACTIONS = ("start", "toggle_pause", "stop", "page", "resume_checkpoint", "runs",
                     "screenshot")


class TransformerApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "transformer-tui"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("s", "start", "Start"),
        Binding("p", "toggle_pause", "Pause/Resume"),
        Binding("x", "stop", "Stop"),
        Binding("r", "resume_checkpoint", "Resume from checkpoint", show=False),
        Binding("l", "runs", "Runs"),
        Binding("q", "quit", "Quit"),
        Binding("ctrl+s", "screenshot", "Screenshot", show=False),
        *(Binding(str(i), f"page('{page}')", page.capitalize(), show=False)
          for i, page in enumerate(PAGES, start=1)),
    ]

    def __init__(self, preset: str = "sample", overrides: tuple[str, ...] | list[str] = (),
                 start: bool = False, attach: str | Path | None = None,
                 run_dir: str | Path | None = None, runs_dir: str | Path = "saved",
                 show_runs: bool = False, clock: Callable[[], float] = time.time,
                 probe: Any = None, probe_seconds: float = 2.0, refresh_hz: float = 4.0) -> None:
        super().__init__()
        self.preset = preset
        self.overrides = tuple(overrides)
        self.start_at_once = start
        self.attach = str(attach) if attach is not None else None  # followed from the start
        self.run_dir = Path(run_dir) if run_dir is not None else None  # where a start writes
        self.runs_dir = Path(runs_dir)
        self.show_runs = show_runs  # open on the list of runs
        self.clock = clock
        self.probe = probe  # for the memory panel: anything with .sample() -> MemoryReading
        self.probe_seconds = probe_seconds
        self.refresh_hz = refresh_hz
        self.state = RunState(clock=clock)
        self.inbox = EventInbox(lambda: self.post_message(EventsWaiting()), clock=clock)
        self.followed: Path | None = None  # the run directory this app is a client of
        self.tail: EventTail | None = None  # its events.jsonl
        self.config: RunConfig | None = None
        self._quit_when_done = False
        self._seen_status = -1
        self._dashboard_ready = False

    # --- layout ---

    def compose(self) -> ComposeResult:
        with Vertical(id="dashboard"):
            yield StatusBar(id="status")
            yield ControlBar(preset=self.preset, id="controls")
            yield Tabs(*(Tab(f"{i} {page.capitalize()}", id=page)
                         for i, page in enumerate(PAGES, start=1)), id="pages")
            with Container(id="main", classes="-page-run"):
                yield StagesPanel(id="stages", classes="panel page-run")
                yield TokenizerPanel(id="tokenizer", classes="panel page-run")
                yield TrainingPanel(id="training", classes="panel page-run")
                yield LossPanel(id="loss", classes="panel page-loss")
                yield MemoryPanel(attached=self.attach is not None, probe=self.probe,
                                  probe_seconds=self.probe_seconds, id="memory",
                                  classes="panel page-run")
                yield CheckpointsPanel(id="checkpoints", classes="panel page-checkpoints")
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
            self.attach_to(Path(self.attach))
        else:
            self.query_one("#preset").focus()
            if self.start_at_once:
                self.action_start()
            else:
                self.look_for_earlier_run()
        self._dashboard_ready = True
        self.refresh_panels(force=True)
        if self.show_runs:
            self.action_runs()

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
        elif page == "run" and self.controls.picking and not self.state.active:
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
        if not self.is_running or self._exit:
            return  # shutting down: widgets are being removed, a draw would miss children
        for panel in self.panels:
            panel.update_from(self.state, force)
        self._show_status()

    def _show_status(self) -> None:
        if not self.is_running or self._exit:
            return
        if self.state.versions["status"] != self._seen_status:
            self._seen_status = self.state.versions["status"]
            self.query_one(StatusBar).update_from(self.state)
            self.controls.show_state(self.state.status)
            self.refresh_bindings()
            if self._quit_when_done and not self.state.active:
                self.exit()  # the stop asked on quit is done: checkpoint saved

    def on_memory_read(self, message: MemoryRead) -> None:
        self.state.set_reading(message.reading)

    # --- following a run directory ---

    def attach_to(self, run_dir: Path) -> None:
        """Become a client of the run in ``run_dir``: its history, then live, with control."""
        self.followed = run_dir
        self.inbox.take()  # what a tail before this one read belongs to another run
        self.state.starting("", str(run_dir), fresh=True)
        self.state.set_status(Status.IDLE)  # until its events or its process say more
        self.controls.follow(str(run_dir))
        self.query_one(CheckpointsPanel).run_dir = str(run_dir)
        if not run_dir.is_dir():
            self.state.config_error(f"{run_dir}: no such run directory")
            return
        self.state.note(f"attached to {run_dir}")
        self.state.max_tokens = config_max_tokens(run_dir / "config.toml")
        self.follow(run_dir / "events.jsonl")
        self.watch_process(run_dir, None)
        self.action_page("run")

    def unfollow(self) -> None:
        """Be a client of no run (a live one goes on): back to choosing what to start."""
        for group in ("tail", "process"):
            self.workers.cancel_group(self, group)
        self.followed = self.tail = None
        self.inbox.take()  # what the cancelled tail had read belongs to that run
        self.state.starting("", "", fresh=True)
        self.state.set_status(Status.IDLE)

    def follow(self, path: Path) -> None:
        self.tail = EventTail(path)
        self.follow_events(self.tail)

    @work(thread=True, group="tail", exclusive=True, exit_on_error=False)
    def follow_events(self, tail: EventTail) -> None:
        """Read the file from where the tail is, then what is appended, until cancelled."""
        worker = get_current_worker()
        while not worker.is_cancelled:
            events = tail.read_new()
            if events and not worker.is_cancelled:  # (cancelled: another run is shown now)
                now = self.clock()
                self.inbox.put_many([(now if at is None else at, event) for at, event in events])
            elif wait_unless_cancelled(worker, 0.25):
                return

    @work(thread=True, group="process", exclusive=True, exit_on_error=False)
    def watch_process(self, run_dir: Path, pid: int | None) -> None:
        """Every few seconds: is the run process alive (lock, heartbeat), stalled, or gone?
        A process this app started is also reaped here, with its exit status."""
        worker = get_current_worker()
        exit_status: int | None = None
        while not worker.is_cancelled:
            if pid is not None and exit_status is None:
                exit_status = reap_child(pid)
            try:
                summary = runs.summarize(run_dir)
            except (OSError, EngineError):
                summary = None
            if summary is not None:
                self.post_message(ProcessSeen(
                    run_dir=str(run_dir), state=summary.state.value, who=who_holds(summary),
                    child_running=pid is not None and exit_status is None,
                    exit_status=exit_status, log_line=last_line(run_dir / "run.log")))
            if wait_unless_cancelled(worker, PROCESS_SECONDS):
                return

    def on_process_seen(self, message: ProcessSeen) -> None:
        if self.followed is None or message.run_dir != str(self.followed):
            return  # an earlier directory's watcher, overtaken
        self._read_to_end()  # an end event written just before the process went wins
        if message.exit_status is not None and self.state.status == Status.STARTING:
            self.state.launch_failed(message.log_line or
                                     f"the run process exited with status {message.exit_status}")
            self.notify(self.state.reason, title="The run did not start", severity="error",
                        timeout=15)
        elif not (message.child_running and message.state == "dead"):
            # (the process started here runs: what looks dead is the run it resumes, until
            # the new process takes the lock)
            self.state.process_seen(message.state, message.who)
        self._show_status()

    def _read_to_end(self) -> None:
        """On the UI thread: what the followed file holds that the worker has not read yet."""
        while self.tail is not None and (events := self.tail.read_new()):
            now = self.clock()
            self.inbox.put_many([(now if at is None else at, event) for at, event in events])
        self._apply_events()

    # --- actions ---

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        status = self.state.status
        if isinstance(self.screen, (ConfirmScreen, ChoiceScreen)):
            return False  # a question is open: answer it first
        if isinstance(self.screen, RunsScreen) and action in DASHBOARD_ACTIONS:
            return False  # the list has its own keys
        if action == "start":
            return True if self.controls.picking and not status.active else None
        if action == "toggle_pause":
            return True if status in PAUSABLE else None
        if action == "stop":
            return True if status in STOPPABLE else None
        return True

    def action_start(self) -> None:
        if not self.controls.picking or self.state.active:
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
        run_dir = self.run_dir or self.runs_dir / config.name
        earlier = runs.earlier_run(run_dir)
        if earlier is None:
            self._launch(config, run_dir, preset, self.overrides)
        elif earlier.state.value in ("running", "paused", "stalled"):
            def attach(choice: str | None) -> None:
                if choice == "attach":
                    self.attach_to(run_dir)

            self.push_screen(ChoiceScreen(
                f"A run is live in {run_dir} ({who_holds(earlier)}).\nOne run per directory: "
                "attach to it, or choose another --run-dir.",
                [("attach", "Attach to it", "a")]), attach)
        else:
            def answered(choice: str | None) -> None:
                if choice == "resume":
                    self._launch(config, run_dir, preset, self.overrides, resume="last")
                elif choice == "fresh":
                    try:
                        moved = runs.move_aside(run_dir)
                    except (OSError, EngineError) as exc:
                        self.notify(f"Cannot move the earlier run aside: {exc}", severity="error")
                        return
                    self.notify(f"The earlier run is now in {moved}")
                    self._launch(config, run_dir, preset, self.overrides, fresh=True)

            self.push_screen(ChoiceScreen(
                f"An earlier run lives in {run_dir}: {earlier.state.value}, epoch "
                f"{earlier.epoch}/{earlier.epochs}, step {earlier.step:,}.\nResume it, or start "
                f"fresh (the earlier run is moved to {run_dir / 'previous'}/, nothing is lost)?",
                [("resume", "Resume it", "r"), ("fresh", "Start fresh", "f")]), answered)

    def _config_failed(self, message: str) -> None:
        self.state.config_error(message)
        self.notify(message, title="Cannot start", severity="error", timeout=10)
        self.refresh_panels()

    def _launch(self, config: RunConfig, run_dir: Path, preset: str, overrides: tuple[str, ...],
                resume: str | None = None, fresh: bool = False) -> None:
        """Start the run process (detached: it outlives this app and its terminal), then
        follow it."""
        self.config = config
        events = run_dir / "events.jsonl"
        self.followed = run_dir
        if fresh or self.tail is None or self.tail.path != events:
            self.state.starting(config.name, str(run_dir), config.training.max_tokens, fresh=True)
            self.follow(events)  # a resume shows the run's whole history
        else:
            self.state.starting(config.name, str(run_dir), config.training.max_tokens)
        self.query_one(CheckpointsPanel).run_dir = str(run_dir)
        argv = ["--preset", preset, *(f"--set={item}" for item in overrides),
                "--run-dir", str(run_dir)] + (["--resume", resume] if resume else [])
        try:
            pid = runs.launch_detached(argv, run_dir)
        except (OSError, EngineError) as exc:
            self.state.launch_failed(f"cannot start the run process: {exc}")
            self.refresh_panels()
            return
        with_items = f" with {' '.join(overrides)}" if overrides else ""
        self.state.note(f"starting {config.name}{with_items}"
                        + (f", resuming from {resume}" if resume else "")
                        + f": run process {pid} (transformer-train {' '.join(argv)})")
        self.watch_process(run_dir, pid)
        self.focus_page()  # never a button: Enter must not quit or stop by accident
        self.refresh_panels()

    @on(Input.Submitted, "#preset-path")
    def _path_submitted(self) -> None:
        self.action_start()

    @on(Select.Changed, "#preset")
    def _preset_changed(self) -> None:
        self.look_for_earlier_run()

    def look_for_earlier_run(self) -> None:
        """Offer the checkpoints an earlier run of the chosen preset left in its run dir."""
        if self.state.active or self.state.started_at is not None or not self.controls.picking:
            return
        try:
            config = load_config(self.controls.preset() or "sample", self.overrides)
        except EngineError:
            return  # said when the user starts
        self.query_one(CheckpointsPanel).read_earlier(self.run_dir or self.runs_dir / config.name)

    def on_earlier_checkpoints(self, message: EarlierCheckpoints) -> None:
        self.state.earlier_checkpoints(message.run_dir, message.saved)

    def _control(self, command: str) -> bool:
        """Send pause / resume / stop to the followed run; False (and why) if it cannot."""
        if self.followed is None:
            return False
        try:
            runs.send_control(self.followed, command)
        except (OSError, EngineError) as exc:
            self.notify(str(exc), title=f"Cannot {command}", severity="error", timeout=10)
            return False
        return True

    def action_toggle_pause(self) -> None:
        if self.state.status in (Status.RUNNING, Status.STALLED):
            if self._control("pause"):
                self.state.note("pause requested: the run pauses at its next safe point")
        elif self.state.status == Status.PAUSED:
            self._control("resume")

    def action_stop(self) -> None:
        if self.state.status not in STOPPABLE:
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._request_stop()

        self.push_screen(ConfirmScreen("Stop the run?\nIt stops at the next safe point and saves "
                                       "checkpoint_last.pt, so it can be resumed.",
                                       yes="Stop"), answered)

    def _request_stop(self) -> bool:
        if not self._control("stop"):
            return False
        self.state.stopping()
        self.refresh_panels()
        return True

    async def action_quit(self) -> None:
        if not self.state.active:
            self.exit()
            return
        if self.state.status == Status.STOPPING and self._quit_when_done:
            self.exit()  # asked twice: leave now; the run process finishes stopping on its own
            return

        def answered(choice: str | None) -> None:
            if choice == "leave" or (choice is not None and not self.state.active):
                self.exit()
            elif choice == "stop":
                if self._request_stop():
                    self._quit_when_done = True
                    self.notify("Stopping the run (saving a checkpoint), then quitting…")

        self.push_screen(ChoiceScreen(
            f"The run in {self.followed} is live.\nIt goes on without this app (transformer-tui "
            "lists it again), or stops now and saves checkpoint_last.pt.",
            [("leave", "Leave it running", "l"), ("stop", "Stop it", "s")]), answered)

    def action_resume_checkpoint(self) -> None:
        """r: resume from the checkpoint selected in the table (asks first)."""
        panel = self.query_one(CheckpointsPanel)
        if not panel.request_resume():
            self.notify("No checkpoint to resume from yet (3 shows the checkpoints).",
                        severity="warning")

    @on(CheckpointsPanel.ResumeRequested)
    def _resume_requested(self, event: CheckpointsPanel.ResumeRequested) -> None:
        saved, path = event.saved, event.path
        if self.state.active:
            self.notify("The run is live: stop it before resuming from a checkpoint.",
                        severity="warning")
            return
        if not path.is_file():
            self.notify(f"{path} no longer exists.", severity="error")
            return
        run_dir = path.parent
        if self.controls.picking:  # the preset chosen here, with this app's --set items
            preset, overrides = self.controls.preset() or "sample", self.overrides
        else:  # attached: the run's own resolved config
            preset, overrides = str(run_dir / "config.toml"), ()
        try:
            config = load_config(preset, overrides)
        except EngineError as exc:
            self._config_failed(str(exc))
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._launch(config, run_dir, preset, overrides, resume=str(path))

        self.push_screen(ConfirmScreen(
            f"Resume from {saved.name}?\nepoch {saved.epoch}, step {saved.step:,}, "
            f"preset {config.name}, in {run_dir}", yes="Resume"), answered)

    def action_runs(self) -> None:
        """l: the runs under the runs directory; Enter attaches, n starts a new one."""
        def chosen(choice: Path | str | None) -> None:
            if isinstance(choice, Path):
                self.attach_to(choice)
            elif choice == "new":
                self.unfollow()
                self.controls.pick()
                self.action_page("run")
                self.look_for_earlier_run()

        self.push_screen(RunsScreen(self.runs_dir, followed=self.followed), chosen)

    def action_screenshot(self) -> None:
        """ctrl+s: the screen as an SVG file in the run directory (else here)."""
        folder = self.followed or Path(self.state.run_dir or ".")
        name = time.strftime("screenshot-%Y%m%d-%H%M%S.svg", time.localtime(self.clock()))
        try:
            path = self.save_screenshot(name, path=str(folder))
        except OSError as exc:
            self.notify(f"Cannot save a screenshot in {folder}: {exc}", severity="error")
            return
        self.notify(f"Screenshot saved: {path}")
