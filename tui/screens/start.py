"""StartActions: how the dashboard starts a run (a part of DashboardScreen, in a module of its own).

s (or Start, or Enter in the preset path) starts the chosen preset with the app's --set items in
its run directory; where an earlier run lives the user chooses: resume it, start fresh (the
earlier run is moved aside, never overwritten) or, when it is live, attach to it. r (or Enter on
a checkpoint row) resumes from the selected checkpoint, after asking. Every start is a detached
run process (engine.runs.launch_detached) that the dashboard then follows. Before a start, the
checkpoints an earlier run of the chosen preset left are offered in the checkpoints table.
"""

from __future__ import annotations

import time
from pathlib import Path

from engine import previous, runs
from engine.config import PRESET_NAMES, RunConfig, load_config
from engine.errors import EngineError
from tui.screens.dialogs import ChoiceScreen, ConfirmScreen
from tui.widgets.checkpoints import CheckpointsPanel


class StartActions:
    """Mixed into DashboardScreen: uses its state, controls, overrides, run_dir, runs_dir,
    follow() and follower."""

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
        if self._refused_as_live(run_dir):
            return
        earlier = previous.earlier_run(run_dir)
        if earlier is None:
            self._launch(config, run_dir, preset, self.overrides)
        else:
            def answered(choice: str | None) -> None:
                if choice == "resume":
                    self._launch(config, run_dir, preset, self.overrides, resume="last")
                elif choice == "fresh":
                    try:
                        moved = previous.move_aside(run_dir)
                    except (OSError, EngineError) as exc:
                        self.notify(f"Cannot move the earlier run aside: {exc}", severity="error")
                        return
                    self.notify(f"The earlier run is now in {moved}")
                    self._launch(config, run_dir, preset, self.overrides, fresh=True)

            self.app.push_screen(ChoiceScreen(
                f"An earlier run lives in {run_dir}: {earlier.state.value}, epoch "
                f"{earlier.epoch}/{earlier.epochs}, step {earlier.step:,}.\nResume it, or start "
                f"fresh (the earlier run is moved to {run_dir / 'previous'}/, nothing is lost)?",
                [("resume", "Resume it", "r"), ("fresh", "Start fresh", "f")]), answered)

    def _refused_as_live(self, run_dir: Path) -> bool:
        """A live run process owns ``run_dir`` (here or on another host, even before it wrote a
        checkpoint): refuse on screen, before starting anything, saying who owns it, and offer
        to attach. (The refusal was once only in the new process's run.log, while the screen
        said "starting" and then followed the other run.)"""
        holder = runs.live_owner(run_dir)
        if holder is None:
            return False

        def attach(choice: str | None) -> None:
            if choice == "attach":
                self.attach_to(run_dir)

        started = holder.get("started_at")
        since = (f", since {time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}"
                 if isinstance(started, (int, float)) else "")
        processes = holder.get("processes") or 1
        ranks = f", {processes} processes" if processes > 1 else ""
        self.state.note(f"not started: {run_dir} is owned by a live run (pid "
                        f"{holder.get('pid', '?')} on {holder.get('host', '?')}{since})")
        self.app.push_screen(ChoiceScreen(
            f"A run is live in {run_dir}: pid {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')}{ranks}{since}.\nOne run per directory: nothing was "
            "started. Attach to it, or choose another --run-dir.",
            [("attach", "Attach to it", "a")]), attach)
        return True

    def _config_failed(self, message: str) -> None:
        self.state.config_error(message)
        self.notify(message, title="Cannot start", severity="error", timeout=10)
        self.refresh_panels()

    def _launch(self, config: RunConfig, run_dir: Path, preset: str, overrides: tuple[str, ...],
                resume: str | None = None, fresh: bool = False) -> None:
        """Start the run process (detached: it outlives this app and its terminal), then
        follow it."""
        if fresh or self.followed != run_dir:
            self.state.starting(config.name, str(run_dir), config.training.max_tokens, fresh=True)
            self.follow(run_dir).follow_events()  # a resume shows the run's whole history
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
        self.follower.watch(pid)
        self.focus_page()  # never a button: Enter must not quit or stop by accident
        self.refresh_panels()

    def look_for_earlier_run(self) -> None:
        """Offer the checkpoints an earlier run of the chosen preset left in its run dir."""
        if self.state.active or self.state.started_at is not None or not self.controls.picking:
            return
        try:
            config = load_config(self.controls.preset() or "sample", self.overrides)
        except EngineError:
            return  # said when the user starts
        self.query_one(CheckpointsPanel).read_earlier(self.run_dir or self.runs_dir / config.name)

    def action_resume_checkpoint(self) -> None:
        """r: resume from the checkpoint selected in the table (asks first)."""
        if not self.query_one(CheckpointsPanel).request_resume():
            self.notify("No checkpoint to resume from yet (3 shows the checkpoints).",
                        severity="warning")

    def on_checkpoints_panel_resume_requested(
            self, event: CheckpointsPanel.ResumeRequested) -> None:
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
            if yes and not self._refused_as_live(run_dir):
                self._launch(config, run_dir, preset, overrides, resume=str(path))

        self.app.push_screen(ConfirmScreen(
            f"Resume from {saved.name}?\nepoch {saved.epoch}, step {saved.step:,}, "
            f"preset {config.name}, in {run_dir}", yes="Resume"), answered)
