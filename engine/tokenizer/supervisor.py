"""One tokenizer training in a child process, supervised: progress, pause, resume, stop.

The Rust trainer runs in a child process (engine/tokenizer/child.py) for two reasons: with
``progress_format="json"`` it writes one JSON line per merge to *stderr*, which the Textual app
draws on, and a separate process can be paused (SIGSTOP/SIGCONT) and stopped (SIGTERM) at any
moment. The parent streams the training sentences over the child's stdin (no second copy of the
corpus, no temporary text file), counting them for ``WordCountProgress`` as they go, and turns
the child's stderr into ``MergeProgress``.
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
from typing import TYPE_CHECKING, Any, Iterable

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
CHUNK_SENTENCES = 10_000  # sentences per write to the child's stdin


class ChildTraining:
    """Stream sentences to a trainer child, report its progress, obey pause/resume/stop.

    Threads: a writer feeds stdin (and counts sentences and characters), a reader parses
    stderr; the stage's own thread polls both a few times a second and is the only one that
    emits events. Pause/resume/stop signal the child from whatever thread asked for them.
    """

    def __init__(self, settings: "TokenizerConfig", emit: Emit, control: RunControl,
                 sentences: Iterable[str], total: int, path: Path, language: str) -> None:
        self.emit, self.control = emit, control
        self.sentences, self.total, self.path = sentences, total, Path(path)
        self.language = language
        self.kind, self.vocab_size = settings.kind, settings.vocab_size
        self.min_frequency = settings.min_frequency
        self.temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self.child: subprocess.Popen | None = None
        self.signal_lock = threading.Lock()
        # written by the worker threads, read by the stage thread
        self.sent = 0
        self.chars: set[str] = set()
        self.writer_done = False
        self.writer_error = ""
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
                   "--min-frequency", str(self.min_frequency), "--out", str(self.temp)]
        with self.signal_lock:
            # A new session: Ctrl-C and a dropped SSH session reach the parent only, which
            # then stops the child itself.
            self.child = subprocess.Popen(command, stdin=subprocess.PIPE,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                          start_new_session=True)
            if self.control.paused:
                self.child.send_signal(signal.SIGSTOP)
        self.threads = [threading.Thread(target=self.write_sentences, daemon=True),
                        threading.Thread(target=self.read_progress, daemon=True)]
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
            for stream in (self.child.stdin, self.child.stderr):
                try:
                    stream.close()
                except OSError:  # unflushed input to a dead child
                    pass

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
            self.check_alphabet()
            if self.writer_done and not self.writer_error and not self.alphabet():
                raise DataError(f"data: the training split has {self.total:,} sentences but no "
                                "text (all empty); the tokenizer needs words to learn from")
            now = self.active()
            if not counted_final and (self.writer_done or finished):
                counted_final = True
                if not self.writer_error:
                    emit(self.count_event(now))
            elif (not counted_final and self.sent and now - last_count >= EVENT_INTERVAL
                  and not control.paused):
                last_count = now
                emit(self.count_event(now))
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
        if code != 0 or self.writer_error or not self.temp.is_file():
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

    def count_event(self, now: float) -> WordCountProgress:
        return WordCountProgress(done=self.sent, total=self.total,
                                 per_second=round(self.sent / now, 1) if now > 0 else 0.0,
                                 elapsed=round(now, 3))

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
        """vocab_size must hold the specials and every character of the training text: checked
        once every sentence is counted (the writer is done), so the minimum said is the real
        one, not a count so far."""
        if not self.writer_done or self.writer_error:
            return
        needed = self.initial_vocab()
        if needed > self.vocab_size:
            raise ConfigError(
                f"[tokenizer] vocab_size = {self.vocab_size}: smaller than the alphabet of the "
                f"training text ({needed - len(SPECIALS):,} characters) plus "
                f"{len(SPECIALS)} special tokens; use at least {needed:,}, more to leave room "
                "for merges")

    # --- worker threads ---

    def write_sentences(self) -> None:
        """Feed the child; count sentences; collect characters cheaply.

        Characters: bytes.translate deletes the ASCII characters already seen, in C; what
        remains (new ASCII, and the few non-ASCII bytes) is decoded and added. A plain
        set.update over every character costs about 5x more (2 s vs 0.4 s for 2M sentences).
        """
        assert self.child is not None and self.child.stdin is not None
        seen_ascii = b""
        stdin = self.child.stdin
        batch: list[str] = []
        try:
            for sentence in self.sentences:
                batch.append(sentence)
                if len(batch) == CHUNK_SENTENCES:
                    seen_ascii = self.write_batch(stdin, batch, seen_ascii)
                    batch = []
            if batch:
                seen_ascii = self.write_batch(stdin, batch, seen_ascii)
            stdin.close()
        except (BrokenPipeError, OSError) as exc:  # the child died or was stopped
            self.writer_error = f"{type(exc).__name__}: {exc}"
        finally:
            self.writer_done = True

    def write_batch(self, stdin: Any, batch: list[str], seen_ascii: bytes) -> bytes:
        text = "\n".join(batch) + "\n"
        if text.count("\n") != len(batch):  # a sentence with a line break would become two
            text = "\n".join(s.replace("\n", " ") for s in batch) + "\n"
        data = text.encode("utf-8", "replace")
        rest = data.translate(None, seen_ascii)
        if rest:
            self.chars = self.chars | set(rest.decode("utf-8", "replace"))  # rebind: read elsewhere
            seen_ascii = bytes(sorted(ord(c) for c in self.chars if ord(c) < 128))
        stdin.write(data)
        self.sent += len(batch)
        return seen_ascii

    def read_progress(self) -> None:
        """The trainer's JSON lines: {"stage": ..., "current": ..., "total": ...}."""
        assert self.child is not None and self.child.stderr is not None
        for raw in self.child.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
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
        elif self.writer_error:
            why = f"stopped reading its input ({self.writer_error})"
        else:
            why = "ended without writing a tokenizer"
        what = f" for {self.language!r}" if self.language else ""
        return ChildProcessFailed(f"tokenizer training process{what} {why}",
                                  details=list(self.stderr_tail))

