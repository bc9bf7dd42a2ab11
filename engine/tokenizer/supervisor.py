"""One tokenizer training in a child process, supervised: progress, pause, resume, stop.

The Rust trainer runs in a child process (engine/tokenizer/child.py) for two reasons: with
``progress_format="json"`` it writes one JSON line per merge to *stderr*, which the Textual app
draws on, and a separate process can be paused (SIGSTOP/SIGCONT) and stopped (SIGTERM) at any
moment. The child trains from the text files the data stage wrote (the library reads them itself,
as fast as a bare ``Tokenizer.train``); the parent follows how far it has read them (its file
positions, from /proc on Linux) for ``WordCountProgress`` and turns the child's stderr into
``MergeProgress``.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from tokenizers import Tokenizer

from engine.control import RunControl, RunStopped
from engine.errors import ChildProcessFailed, ConfigError, DataError, EngineError
from engine.events import Emit, MergeProgress, WordCountProgress
from engine.vocab import SPECIALS

if TYPE_CHECKING:
    from engine.config import TokenizerConfig

CHILD_MODULE = "engine.tokenizer.child"
EVENT_INTERVAL = 0.2  # seconds between progress events of one kind: a few a second
RATE_WINDOW = 2.0  # seconds of (unpaused) time over which merges per second are measured


class ChildTraining:
    """Run a trainer child on text files, report its progress, obey pause/resume/stop.

    ``total``: the sentences (lines) in ``files``; ``chars``: the characters in them, which the
    alphabet check needs before training starts. Threads: a reader parses the child's stderr;
    the stage's own thread polls it a few times a second and is the only one that emits events.
    Pause/resume/stop signal the child from whatever thread asked for them.
    """

    def __init__(self, settings: "TokenizerConfig", emit: Emit, control: RunControl,
                 files: list[Path], total: int, chars: Iterable[str], path: Path,
                 language: str) -> None:
        self.emit, self.control = emit, control
        self.files, self.total, self.path = [Path(f) for f in files], total, Path(path)
        self.chars = set(chars)
        self.sizes = [f.stat().st_size for f in self.files]
        self.file_index = {str(f.resolve()): i for i, f in enumerate(self.files)}
        self.bytes_seen = 0
        self.language = language
        self.kind, self.vocab_size = settings.kind, settings.vocab_size
        self.min_frequency = settings.min_frequency
        self.temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self.child: subprocess.Popen | None = None
        self.signal_lock = threading.Lock()
        # written by the worker threads, read by the stage thread
        self.read_done = False  # the trainer has read every file (it reports a later stage)
        self.stage = ""  # the trainer's current phase, as it names it
        self.unique_words = 0
        self.merges = 0
        self.merges_final: int | None = None
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=12)

    # --- time that excludes pauses ---

    def active(self) -> float:
        return time.monotonic() - self.t0 - (self.control.paused_so_far() - self.paused0)

    # --- main ---

    def run(self) -> dict[str, int]:
        control = self.control
        if control.stop_requested:
            raise RunStopped()
        self.t0, self.paused0 = time.monotonic(), control.paused_so_far()
        self.check_alphabet()
        if not self.alphabet():
            raise DataError(f"data: the training split has {self.total:,} sentences but no "
                            "text (all empty); the tokenizer needs words to learn from")
        control.add_listener(self.on_control)
        try:
            self.start_child()
            return self.watch()
        finally:
            control.remove_listener(self.on_control)
            self.kill_child()
            self.temp.unlink(missing_ok=True)

    def start_child(self) -> None:
        command = [sys.executable, "-m", CHILD_MODULE, "--kind", self.kind,
                   "--vocab-size", str(self.vocab_size),
                   "--min-frequency", str(self.min_frequency), "--out", str(self.temp),
                   "--files", *map(str, self.files)]
        with self.signal_lock:
            # A new session: Ctrl-C and a dropped SSH session reach the parent only, which
            # then stops the child itself. glibc's own malloc settings: the trainer's threads
            # allocate side by side, and the one-arena tuning (engine/__init__.py) is for
            # training, where one thread allocates nearly everything.
            self.child = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                          start_new_session=True,
                                          env=dict(os.environ, TRANSFORMER_TUI_MALLOC="glibc"))
            if self.control.paused:
                self.child.send_signal(signal.SIGSTOP)
        self.threads = [threading.Thread(target=self.read_progress, daemon=True)]
        for thread in self.threads:
            thread.start()

    def on_control(self, change: str) -> None:
        with self.signal_lock:
            child = self.child
            if child is None or child.poll() is not None:
                return
            if change == "paused":
                child.send_signal(signal.SIGSTOP)
            elif change == "resumed":
                child.send_signal(signal.SIGCONT)
            elif change == "stopped":
                child.send_signal(signal.SIGTERM)
                child.send_signal(signal.SIGCONT)  # a stopped process acts on SIGTERM once woken

    def kill_child(self) -> None:
        with self.signal_lock:
            if self.child is not None and self.child.poll() is None:
                self.child.kill()  # SIGKILL ends a stopped (paused) process too
                self.child.wait()
        for thread in getattr(self, "threads", []):
            thread.join(timeout=5)
        if self.child is not None:
            if self.child.stderr is not None:
                self.child.stderr.close()

    def watch(self) -> dict[str, int]:
        emit, control = self.emit, self.control
        assert self.child is not None
        last_count = last_merge = -1.0
        merge_start: float | None = None  # active time the merge phase began
        counted_final = False
        samples: collections.deque[tuple[float, int]] = collections.deque()
        while True:
            try:
                self.child.wait(timeout=0.05)
                finished = True
            except subprocess.TimeoutExpired:
                finished = False
            if control.stop_requested:
                raise RunStopped()
            now = self.active()
            if not counted_final and (self.read_done or (finished and self.child.returncode == 0)):
                counted_final = True
                emit(self.count_event(now, self.total))
            elif not counted_final and now - last_count >= EVENT_INTERVAL and not control.paused:
                last_count = now
                emit(self.count_event(now, self.sentences_read()))
            if self.stage == "Compute merges" and not finished and not control.paused:
                merge_start = now if merge_start is None else merge_start
                samples.append((now, self.merges))
                while len(samples) > 2 and samples[1][0] < now - RATE_WINDOW:
                    samples.popleft()
                if now - last_merge >= EVENT_INTERVAL and len(samples) > 1:  # a rate to show
                    last_merge = now
                    emit(self.merge_event(now, samples))
            if finished:
                break
        for thread in self.threads:
            thread.join()
        if control.stop_requested:
            raise RunStopped()
        code = self.child.returncode
        if code != 0 or not self.temp.is_file():
            raise self.failure(code)
        os.replace(self.temp, self.path)
        result = self.result()
        # the final state, always: speed averaged over the whole merge phase
        span = self.active() - merge_start if merge_start is not None else 0.0
        emit(MergeProgress(merges=result["merges"], target_merges=result["merges"],
                           vocab_size=result["vocab_size"], target_vocab=self.vocab_size,
                           per_second=round(result["merges"] / span, 1) if span > 0 else 0.0,
                           eta=0.0, elapsed=round(self.active(), 3), language=self.language))
        return result

    # --- events ---

    def count_event(self, now: float, done: int) -> WordCountProgress:
        return WordCountProgress(done=done, total=self.total,
                                 per_second=round(done / now, 1) if now > 0 else 0.0,
                                 elapsed=round(now, 3))

    def sentences_read(self) -> int:
        """An estimate until the trainer has read everything: the sentences in proportion to
        the bytes read, never the total (only the final event may read as complete)."""
        total_bytes = sum(self.sizes)
        if not total_bytes:
            return 0
        return min(int(self.total * self.bytes_read() / total_bytes), self.total - 1)

    def bytes_read(self) -> int:
        """How far the child has read its files, from its open files' positions in
        /proc/<pid>/fdinfo (Linux; elsewhere it stays 0 until the end). The library reads the
        files one after another, so the files before the open one are done."""
        assert self.child is not None
        proc = f"/proc/{self.child.pid}"
        try:
            fds = os.listdir(f"{proc}/fd")
        except OSError:
            return self.bytes_seen
        for fd in fds:
            try:
                index = self.file_index.get(os.readlink(f"{proc}/fd/{fd}"))
                if index is None:
                    continue
                with open(f"{proc}/fdinfo/{fd}", encoding="ascii") as info:
                    position = int(info.readline().split()[1])  # "pos:\t<bytes>"
            except (OSError, ValueError, IndexError):
                continue
            self.bytes_seen = max(self.bytes_seen, sum(self.sizes[:index]) + position)
        return self.bytes_seen

    def initial_vocab(self) -> int:
        return len(SPECIALS) + len(self.alphabet())

    def merge_event(self, now: float, samples: collections.deque) -> MergeProgress:
        # an estimate until the trainer ends (a merge can rebuild an existing token, WordPiece
        # adds "##" copies of characters); kept above the merges done so far, since only the
        # final event may read as complete
        target_merges = max(self.vocab_size - self.initial_vocab(), self.merges + 1)
        rate = self.merge_rate(samples)
        eta = (target_merges - self.merges) / rate if rate > 0 else 0.0
        return MergeProgress(merges=self.merges, target_merges=target_merges,
                             vocab_size=self.initial_vocab() + self.merges,
                             target_vocab=self.vocab_size, per_second=round(rate, 1),
                             eta=round(eta, 1), elapsed=round(now, 3), language=self.language)

    def merge_rate(self, samples: collections.deque) -> float:
        if len(samples) < 2:
            return 0.0
        (t_old, m_old), (t_new, m_new) = samples[0], samples[-1]
        return (m_new - m_old) / (t_new - t_old) if t_new > t_old else 0.0

    # --- the alphabet, as the trainer will see it ---

    def alphabet(self) -> set[str]:
        chars = self.chars - {" ", "\n"}
        if self.kind == "bpe" and chars:
            chars.add("▁")  # Metaspace marks every word start
        return chars

    def check_alphabet(self) -> None:
        """vocab_size must hold the specials and every character; checked before training (the
        data stage collected the characters while it wrote the files)."""
        needed = self.initial_vocab()
        if needed > self.vocab_size:
            raise ConfigError(
                f"[tokenizer] vocab_size = {self.vocab_size}: smaller than the alphabet of the "
                f"training text ({needed - len(SPECIALS):,} characters) plus "
                f"{len(SPECIALS)} special tokens; use at least {needed:,}, more to leave room "
                "for merges")

    # --- the reader thread ---

    def read_progress(self) -> None:
        """The trainer's JSON lines: {"stage": ..., "current": ..., "total": ...}."""
        assert self.child is not None and self.child.stderr is not None
        for raw in self.child.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if line.startswith("{") and not raw.endswith(b"\n"):
                continue  # a progress line cut short by the child's death says nothing
            self.stderr_tail.append(line)
            progress = None
            if line.startswith("{"):
                try:
                    progress = json.loads(line)
                except ValueError:
                    pass
            if not isinstance(progress, dict) or "stage" not in progress:
                continue
            stage, current, total = progress["stage"], progress["current"], progress["total"]
            self.stage = stage
            self.read_done = True  # the trainer reports its stages after reading the files
            if stage == "Tokenize words":
                self.unique_words = total
            elif stage == "Compute merges":
                self.merges = current
                if current == total:  # the trainer's last line sets total to the merges done
                    self.merges_final = current

    # --- results ---

    def result(self) -> dict[str, int]:
        tokenizer = Tokenizer.from_file(str(self.path))
        vocab = tokenizer.get_vocab()
        alphabet = sum(1 for token in vocab if len(token) == 1)  # specials are longer
        merges = self.merges_final if self.merges_final is not None else self.merges
        return {"vocab_size": tokenizer.get_vocab_size(), "merges": merges,
                "unique_words": self.unique_words, "alphabet": alphabet}

    def failure(self, code: int | None) -> EngineError:
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            why = f"was killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
        elif code:
            why = f"exited with status {code}"
        else:
            why = "ended without writing a tokenizer"
        what = f" for {self.language!r}" if self.language else ""
        return ChildProcessFailed(f"tokenizer training process{what} {why}",
                                  details=list(self.stderr_tail))

