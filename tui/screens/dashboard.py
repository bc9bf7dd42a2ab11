"""DashboardScreen: one run, its panels and its keys (the App's default screen).

The screen is a client of a run directory (engine/runs.py). It starts every run as a detached run
process (its own session, so that it outlives the terminal), or attaches to one started
elsewhere; a RunFollower it owns reads the run's events.jsonl and watches the run process in
thread workers (a run whose process is gone without an end event shows as dead), and steers the
run through its control channel (pause, resume, stop). Events go into an EventInbox, which posts
one message per burst; the screen applies every event to its DashboardState and a timer redraws the
panels a few times a second. An Alert the run raises (engine/alerts.py) goes into the log; one
raised while the screen follows the run is also a toast, the bell and a terminal notification.

Wide (at least 110x34) every panel shows at once; smaller, one page at a time (keys 1-4); under
80x24 a message says the terminal is too small. Choosing and starting a run (the preset, an
earlier run in its directory, a checkpoint to resume from) is in tui/screens/start.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Input, Select, Static, Tab, Tabs

from engine.errors import EngineError
from engine.events import Alert
from engine.paths import RUNS_ROOT
from tui.follow import RunFollower
from tui.inbox import EventInbox
from tui.messages import EarlierCheckpoints, EventsWaiting, MemoryRead, ProcessSeen
from tui.rundir import config_max_tokens
from tui.screens.dialogs import ChoiceScreen, ConfirmScreen
from tui.screens.start import StartActions
from tui.state import DashboardState, Status
from tui.widgets.checkpoints import CheckpointsPanel
from tui.widgets.controls import ControlBar
from tui.widgets.log import LogPanel
from tui.widgets.loss import LossPanel
from tui.widgets.memory import MemoryPanel
from tui.widgets.panel import StateView
from tui.widgets.stages import StagesPanel
from tui.widgets.status import StatusBar
from tui.widgets.tokenizer import TokenizerPanel
from tui.widgets.training import TrainingPanel

MIN_SIZE = (80, 24)  # below this the screen says the terminal is too small
COMPACT_BELOW = (110, 34)  # below this width or height, one page of panels at a time
PAGES = ("run", "loss", "checkpoints", "log")  # compact pages; memory is on "run"
EVENTS_PER_TURN = 2000  # events applied per UI turn when replaying a long events.jsonl
ALERT_SEVERITY = {"finished": "information", "target": "information", "stopped": "warning"}
STOPPABLE = (Status.STARTING, Status.RUNNING, Status.PAUSED, Status.STALLED)
PAUSABLE = (Status.RUNNING, Status.PAUSED, Status.STALLED)


class DashboardScreen(StartActions, Screen):
    BINDINGS = [
        Binding("s", "start", "Start"),
        Binding("p", "toggle_pause", "Pause/Resume"),
        Binding("x", "stop", "Stop"),
        Binding("r", "resume_checkpoint", "Resume from checkpoint", show=False),
        Binding("l", "app.runs", "Runs"),
        Binding("w", "loss_window", "Window"),  # the loss chart: whole run / recent steps
        Binding("y", "loss_log", "Log y"),
        Binding("ctrl+s", "screenshot", "Screenshot", show=False),
        *(Binding(str(i), f"page('{page}')", page.capitalize(), show=False)
          for i, page in enumerate(PAGES, start=1)),
    ]

    def __init__(self, preset: str = "sample", overrides: tuple[str, ...] = (),
                 start: bool = False, attach: Path | None = None, run_dir: Path | None = None,
                 runs_dir: Path = RUNS_ROOT, clock: Callable[[], float] = time.time,
                 probe: Any = None, probe_seconds: float = 2.0, refresh_hz: float = 4.0) -> None:
        super().__init__()
        self.overrides = overrides  # the app's --set items, for every start from here
        self.start_at_once = start
        self.attach = attach  # followed from the start
        self.run_dir = run_dir  # where a start writes (else runs_dir / the preset's name)
        self.runs_dir = runs_dir
        self.clock = clock
        self.probe = probe  # for the memory panel: anything with .sample() -> MemoryReading
        self.probe_seconds = probe_seconds
        self.refresh_hz = refresh_hz
        self.state = DashboardState(clock=clock)
        # made here, not in compose: the footer asks check_action (which reads it) early
        self.controls = ControlBar(preset=preset, id="controls")
        self.inbox = EventInbox(lambda: self.post_message(EventsWaiting()), clock=clock)
        self.follower: RunFollower | None = None  # the run directory this screen is a client of
        self._quit_when_done = False
        self._live_since = time.time()  # alerts written before this are history, not news
        self._seen_status = -1
        self._ready = False

    @property
    def followed(self) -> Path | None:
        return self.follower.run_dir if self.follower is not None else None

    # --- layout ---

    def compose(self) -> ComposeResult:
        with Vertical(id="dashboard"):
            yield StatusBar(id="status")
            yield self.controls
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
        self.query_one("#pages", Tabs).can_focus = False  # the keys 1-4 choose pages
        self.panels: list[StateView] = [w for w in self.query("*") if isinstance(w, StateView)]
        self.fit_to(self.app.size.width, self.app.size.height)
        self.set_interval(1 / self.refresh_hz, self.refresh_panels)
        if self.attach is not None:
            self.attach_to(self.attach)
        else:
            self.query_one("#preset").focus()
            if self.start_at_once:
                self.action_start()
            else:
                self.look_for_earlier_run()
        self._ready = True
        self.refresh_panels(force=True)

    def on_resize(self, event: Any) -> None:
        if self._ready:  # the first Resize comes before on_mount
            self.fit_to(event.size.width, event.size.height)

    def fit_to(self, width: int, height: int) -> None:
        too_small = width < MIN_SIZE[0] or height < MIN_SIZE[1]
        compact = width < COMPACT_BELOW[0] or height < COMPACT_BELOW[1]
        dashboard = self.query_one("#dashboard")
        dashboard.set_class(too_small, "-too-small")
        dashboard.set_class(compact and not too_small, "-compact")
        self.refresh_bindings()  # the loss chart's keys show where the chart does
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
        self.refresh_bindings()  # the loss chart's keys show on its page
        self.call_after_refresh(self.refresh_panels)  # its panels drawn at their size, at once

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
            if isinstance(event, Alert):
                self._alert(event, at)
        self._show_status()  # a change of state shows at once, not at the next refresh

    def refresh_panels(self, force: bool = False) -> None:
        """Redraw what changed; called by a timer, so the redraw rate is bounded."""
        if not self.app.is_running or self.app._exit:
            return  # shutting down: widgets are being removed, a draw would miss children
        for panel in self.panels:
            panel.update_from(self.state, force)
        self._show_status()

    def _show_status(self) -> None:
        if not self.app.is_running or self.app._exit:
            return
        if self.state.versions["status"] != self._seen_status:
            self._seen_status = self.state.versions["status"]
            self.query_one(StatusBar).update_from(self.state)
            self.controls.show_state(self.state.status)
            self.refresh_bindings()
            if self._quit_when_done and not self.state.active:
                self.app.exit()  # the stop asked on quit is done: checkpoint saved

    def _alert(self, alert: Alert, at: float) -> None:
        """In the log; and when it is news (not replayed from before the attach), a toast, the
        bell and a desktop notification through the terminal (forwarded over SSH by most)."""
        self.state.note(f"alert ({alert.kind}): {alert.text}", at)
        if at < self._live_since:
            return
        self.notify(alert.text, title=f"Alert: {alert.kind}", timeout=30,
                    severity=ALERT_SEVERITY.get(alert.kind, "error"))
        self.app.bell()
        driver = self.app._driver  # no public API writes raw sequences (App.bell uses it too)
        if driver is not None:
            driver.write(terminal_notification("transformer-tui", alert.text))

    def on_memory_read(self, message: MemoryRead) -> None:
        self.state.set_reading(message.reading)

    def on_earlier_checkpoints(self, message: EarlierCheckpoints) -> None:
        self.state.earlier_checkpoints(message.run_dir, message.saved)

    # --- following a run directory ---

    def attach_to(self, run_dir: Path) -> None:
        """Become a client of the run in ``run_dir``: its history, then live, with control."""
        follower = self.follow(run_dir)
        self.state.starting("", str(run_dir), fresh=True)
        self.state.set_status(Status.IDLE)  # until its events or its process say more
        self.controls.follow(str(run_dir))
        self.query_one(CheckpointsPanel).run_dir = str(run_dir)
        if not run_dir.is_dir():
            self.state.config_error(f"{run_dir}: no such run directory")
            return
        self.state.note(f"attached to {run_dir}")
        self.state.max_tokens = config_max_tokens(run_dir / "config.toml")
        follower.follow_events()
        follower.watch()
        self.action_page("run")

    def follow(self, run_dir: Path) -> RunFollower:
        """A follower of ``run_dir`` instead of the one before (its workers not started yet)."""
        self.unfollow()
        self._live_since = time.time()  # (the events' own wall-clock times, not self.clock)
        self.follower = RunFollower(self, run_dir, self.inbox, self.clock)
        return self.follower

    def unfollow(self) -> None:
        """Be a client of no run (a live one goes on)."""
        if self.follower is not None:
            self.follower.stop()
            self.follower = None
        self.inbox.take()  # what the stopped follower had read belongs to that run

    def choose_new_run(self) -> None:
        """Back to choosing what to start (from the list of runs: n)."""
        self.unfollow()
        self.state.starting("", "", fresh=True)
        self.state.set_status(Status.IDLE)
        self.controls.pick()
        self.action_page("run")
        self.look_for_earlier_run()

    def on_process_seen(self, message: ProcessSeen) -> None:
        if self.followed is None or message.run_dir != str(self.followed):
            return  # an earlier directory's watcher, overtaken
        self.follower.read_to_end()  # an end event written just before the process went wins
        self._apply_events()
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

    # --- keys ---

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        status = self.state.status
        if action == "start":
            return True if self.controls.picking and not status.active else None
        if action == "toggle_pause":
            return True if status in PAUSABLE else None
        if action == "stop":
            return True if status in STOPPABLE else None
        if action in ("loss_window", "loss_log"):  # shown where the loss chart is
            return self.query_one(LossPanel).display and (
                not self.query_one("#dashboard").has_class("-compact")
                or self.query_one("#main").has_class("-page-loss"))
        return True

    def _control(self, command: str) -> bool:
        """Send pause / resume / stop to the followed run; False (and why) if it cannot."""
        if self.follower is None:
            return False
        try:
            self.follower.send(command)
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

        self.app.push_screen(ConfirmScreen(
            "Stop the run?\nIt stops at the next safe point and saves checkpoint_last.pt, so "
            "it can be resumed.", yes="Stop"), answered)

    def _request_stop(self) -> bool:
        if not self._control("stop"):
            return False
        self.state.stopping()
        self.refresh_panels()
        return True

    def ask_to_quit(self) -> None:
        """q (from any screen): quit at once, unless the followed run is live; then ask
        whether to leave it running or stop it (and quit once its checkpoint is saved)."""
        if not self.state.active:
            self.app.exit()
            return
        if self.state.status == Status.STOPPING and self._quit_when_done:
            self.app.exit()  # asked twice: leave now; the run process finishes stopping alone
            return

        def answered(choice: str | None) -> None:
            if choice == "leave" or (choice is not None and not self.state.active):
                self.app.exit()
            elif choice == "stop":
                if self._request_stop():
                    self._quit_when_done = True
                    self.notify("Stopping the run (saving a checkpoint), then quitting…")

        self.app.push_screen(ChoiceScreen(
            f"The run in {self.followed} is live.\nIt goes on without this app (transformer-tui "
            "lists it again), or stops now and saves checkpoint_last.pt.",
            [("leave", "Leave it running", "l"), ("stop", "Stop it", "s")]), answered)

    def action_loss_window(self) -> None:
        panel = self.query_one(LossPanel)
        panel.toggle_window()
        panel.update_from(self.state, force=True)  # a key's effect shows at once

    def action_loss_log(self) -> None:
        panel = self.query_one(LossPanel)
        panel.toggle_log()
        panel.update_from(self.state, force=True)

    def action_screenshot(self) -> None:
        """ctrl+s: the screen as an SVG file in the run directory (else here)."""
        folder = self.followed or Path(self.state.run_dir or ".")
        name = time.strftime("screenshot-%Y%m%d-%H%M%S.svg", time.localtime(self.clock()))
        try:
            path = self.app.save_screenshot(name, path=str(folder))
        except OSError as exc:
            self.notify(f"Cannot save a screenshot in {folder}: {exc}", severity="error")
            return
        self.notify(f"Screenshot saved: {path}")

    @on(Input.Submitted, "#preset-path")
    def _path_submitted(self) -> None:
        self.action_start()

    @on(Select.Changed, "#preset")
    def _preset_changed(self) -> None:
        self.look_for_earlier_run()


def terminal_notification(title: str, body: str) -> str:
    """A desktop notification as terminals take it: OSC 9 (iTerm2, kitty, WezTerm, Windows
    Terminal, ...) and OSC 777 (VTE terminals, foot, ...). Control characters are dropped, so a
    text cannot end the sequence early; OSC 777 separates its fields with ';'."""

    def clean(text: str) -> str:
        return "".join(c for c in text if c.isprintable())

    title, body = clean(title).replace(";", ","), clean(body)
    return f"\x1b]9;{title}: {body}\x07\x1b]777;notify;{title};{body}\x07"
