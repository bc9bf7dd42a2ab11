"""A person's evening with the app, in tmux, read off the screen with capture-pane (issue 23):
start the sample preset at 80x24, close the terminal, see it live with `transformer-train
status`, attach from a new 120x40 terminal, pause (the Stages row says paused and its clock
stands), resume from another terminal, see the charts move again, stop; then the screen says
where the state is saved, and the checkpoint cursor rests on checkpoint_last.pt."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tui_runs import SMALL

ROOT = Path(__file__).resolve().parents[1]
# long enough to pause, resume and stop before it ends
LONG = [item for item in SMALL if not item.startswith("training.epochs")] + ["training.epochs=1000"]
ENV = f"PYTHONPATH={ROOT} HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1"

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


class Terminal:
    """A tmux session of its own size, running one command, read as the person sees it."""

    def __init__(self, name: str, cwd: Path, size: tuple[int, int], command: str) -> None:
        self.name = name
        # the command waits a moment: a detached session may start at tmux's default size
        # and take its own from resize-window just after
        subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", str(size[0]), "-y",
                        str(size[1]), f"sleep 0.5; cd {cwd} && {ENV} {command}"], check=True)
        subprocess.run(["tmux", "resize-window", "-t", name, "-x", str(size[0]), "-y",
                        str(size[1])], check=False)

    def screen(self) -> str:
        done = subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name],
                              capture_output=True, text=True)
        return done.stdout

    def press(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def wait_for(self, pattern: str, seconds: float = 120) -> str:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            screen = self.screen()
            if re.search(pattern, screen):
                return screen
            time.sleep(0.3)
        raise AssertionError(f"{pattern!r} not on screen after {seconds:.0f} s:\n{self.screen()}")

    def close(self) -> None:  # the terminal goes, as a dropped SSH connection takes it
        subprocess.run(["tmux", "kill-session", "-t", self.name], check=False)


def transformer_train(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=cwd, capture_output=True,
                          text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                                          "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})


def stages_train_row(screen: str) -> str:
    return next(line for line in screen.splitlines() if re.search(r"[▶‖✓■] train ", line))


def test_start_close_attach_pause_resume_elsewhere_and_stop(tmp_path):
    app = f"{sys.executable} -m tui.cli"
    sets = " ".join(f"--set {item}" for item in LONG)
    first = Terminal("story-first", tmp_path, (80, 24), f"{app} --preset sample {sets}")
    second = None
    try:
        first.wait_for("Start")
        first.press("s")
        screen = first.wait_for(r"step [\d,]+", 180)  # training: the Training panel's step
        assert "RUNNING" in screen
        # at 80 columns nothing a user needs is cut (no ellipsis in the run page's panels)
        assert "…" not in screen, screen
        first.close()

        time.sleep(2)
        status = transformer_train(tmp_path, "status", "saved/sample")
        assert status.returncode == 3 and "running" in status.stdout  # the run went on

        second = Terminal("story-second", tmp_path, (120, 40), f"{app} --attach saved/sample")
        second.wait_for("RUNNING")
        second.press("p")
        screen = second.wait_for("PAUSED")
        screen = second.wait_for(r"‖ train +paused")
        clock = stages_train_row(screen).split()[-1]
        time.sleep(3)
        screen = second.screen()
        assert stages_train_row(screen).split()[-1] == clock  # the stage's clock stands
        step_shown = re.search(r"step ([\d,]+)", screen).group(1)
        heartbeat = transformer_train(tmp_path, "status", "saved/sample").stdout
        assert f"step {step_shown.replace(',', '')}" in heartbeat.replace(",", "")

        resumed = transformer_train(tmp_path, "resume", "saved/sample")  # another terminal
        assert resumed.returncode == 0, resumed.stderr
        screen = second.wait_for("RUNNING")
        lr_before = re.search(r"LR \S+ (\S+)", second.wait_for(r"LR \d")).group(0)
        second.wait_for(r"step [\d,]+")
        deadline = time.monotonic() + 60
        while re.search(r"LR \S+ (\S+)", second.screen()).group(0) == lr_before:
            assert time.monotonic() < deadline, "the LR sparkline froze after the resume"
            time.sleep(0.5)

        second.press("x")
        second.wait_for(r"Stop the run\?")
        second.press("y")
        screen = second.wait_for(r"STOPPED", 120)
        assert "state saved in checkpoint_last.pt" in screen
        rows = [line for line in screen.splitlines() if re.search(r"│ +\S+\.pt ", line)]
        assert rows and "checkpoint_last.pt" in "".join(rows)
    finally:
        first.close()
        if second is not None:
            second.close()
        transformer_train(tmp_path, "stop", "saved/sample")
