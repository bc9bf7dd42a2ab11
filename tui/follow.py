"""RunFollower: one run directory followed for the screen that shows it.

Two thread workers, owned by that screen (Textual cancels them when the screen goes): one reads
the run's events.jsonl (its whole history, then what is appended) into the screen's EventInbox;
the other looks at the run process every few seconds (lock, heartbeat; a process this app
started is also reaped, with its exit status) and posts ProcessSeen. Steering (pause, resume,
stop) goes through the run directory's control channel. A screen that shows several runs owns
one follower per run.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable

from textual.dom import DOMNode
from textual.worker import Worker, get_current_worker

from engine import runs
from engine.errors import EngineError
from tui.inbox import EventInbox
from tui.messages import ProcessSeen
from tui.rundir import last_line, reap_child, who_holds
from tui.tail import EventTail
from tui.workers import wait_unless_cancelled

EVENTS_SECONDS = 0.25  # between two reads of events.jsonl when nothing new was there
PROCESS_SECONDS = 3.0  # between two looks at the run process (dead within 30 s: well within)


class RunFollower:
    def __init__(self, owner: DOMNode, run_dir: Path, inbox: EventInbox,
                 clock: Callable[[], float]) -> None:
        self.owner = owner  # runs the workers and receives ProcessSeen
        self.run_dir = run_dir
        self.inbox = inbox
        self.clock = clock
        self.tail = EventTail(run_dir / "events.jsonl")
        self._workers: dict[str, Worker] = {}

    def follow_events(self) -> None:
        """Read events.jsonl from where the tail is, then what is appended, until stopped."""
        self._start("events", self._read_events)

    def watch(self, pid: int | None = None) -> None:
        """Look at the run process (again); ``pid``: the child this app started, to reap."""
        self._start("process", partial(self._watch_process, pid))

    def stop(self) -> None:
        """Follow no more (the run itself goes on)."""
        for worker in self._workers.values():
            worker.cancel()

    def send(self, command: str) -> None:
        """pause / resume / stop; raises OSError or EngineError when it cannot be sent."""
        runs.send_control(self.run_dir, command)

    def read_to_end(self) -> None:
        """On the UI thread: what the file holds that the worker has not read yet."""
        while events := self.tail.read_new():
            self._put(events)

    def _start(self, name: str, work: Callable[[], None]) -> None:
        if (earlier := self._workers.get(name)) is not None:
            earlier.cancel()
        self._workers[name] = self.owner.run_worker(
            work, name=f"{name} of {self.run_dir}", group=name, thread=True,
            exit_on_error=False)

    def _put(self, events: list) -> None:
        now = self.clock()
        self.inbox.put_many([(now if at is None else at, event) for at, event in events])

    def _read_events(self) -> None:
        worker = get_current_worker()
        while not worker.is_cancelled:
            events = self.tail.read_new()
            if events and not worker.is_cancelled:  # (cancelled: another run is shown now)
                self._put(events)
            elif wait_unless_cancelled(worker, EVENTS_SECONDS):
                return

    def _watch_process(self, pid: int | None) -> None:
        """Every few seconds: is the run process alive (lock, heartbeat), stalled, or gone?"""
        worker = get_current_worker()
        exit_status: int | None = None
        while not worker.is_cancelled:
            if pid is not None and exit_status is None:
                exit_status = reap_child(pid)
            try:
                summary = runs.summarize(self.run_dir)
            except (OSError, EngineError):
                summary = None
            if summary is not None:
                self.owner.post_message(ProcessSeen(
                    run_dir=str(self.run_dir), state=summary.state.value,
                    who=who_holds(summary), child_running=pid is not None and exit_status is None,
                    exit_status=exit_status, log_line=last_line(self.run_dir / "run.log")))
            if wait_unless_cancelled(worker, PROCESS_SECONDS):
                return
