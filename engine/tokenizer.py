"""Tokenizer stage: train (or reuse) a BPE or WordPiece tokenizer.json with HF `tokenizers`.

The Rust trainer runs in a child process (``python -m engine.tokenizer``) for two reasons: with
``progress_format="json"`` it writes one JSON line per merge to *stderr*, which the Textual app
draws on, and a separate process can be paused (SIGSTOP/SIGCONT) and stopped (SIGTERM) at any
moment. The parent streams the training sentences over the child's stdin (no second copy of the
corpus, no temporary text file), counting them for ``WordCountProgress`` as they go, and turns
the child's stderr into ``MergeProgress``.

Recipes (``new_tokenizer``/``new_trainer``; the benchmark trains the bare library with the same):

- bpe: a Metaspace pre-tokenizer marks word starts with "▁" (as SentencePiece does), then
  punctuation is split off; the Metaspace decoder turns ids back into the original spacing. No
  end-of-word suffix and no continuing-subword prefix: `tokenizers` breaks ties between equally
  frequent pairs by token id, and with those affixes the affixed symbols ("##x", "x</w>") get
  their ids in hash-map order, which changes from process to process. Without them the ids are
  the sorted alphabet's, and the result is the same tokenizer.json in every process.
- wordpiece: what HF's WordPieceTrainer does, done in the open: train BPE with the "##"
  continuing-subword prefix (BERT's pre-tokenizer), then keep only the vocabulary in a WordPiece
  model. (We call BpeTrainer ourselves because WordPieceTrainer ignores progress_format.) The
  "##" prefix brings back the hash-order tie-breaking: the vocabulary size, the special tokens and
  the alphabet are the same in every process, but a few tokens chosen among tied pairs may differ.

Special tokens ``<pad> <unk> <s> </s>`` have ids 0-3 in every tokenizer. No post-processor: the
encode stage adds ``</s>`` (source) and ``<s> ... </s>`` (target) itself.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from engine.control import RunStopped
from engine.errors import ChildProcessFailed, ConfigError, DataError, EngineError
from engine.events import MergeProgress, WordCountProgress

if TYPE_CHECKING:
    from engine.config import RunConfig
    from engine.pipeline import RunContext, StageResult

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]  # ids 0, 1, 2, 3
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
META_FILE = "tokenizer.meta.json"
RECIPE = 1  # bump when new_tokenizer/new_trainer change, so old tokenizers are not reused
EVENT_INTERVAL = 0.2  # seconds between progress events of one kind: a few a second
RATE_WINDOW = 2.0  # seconds of (unpaused) time over which merges per second are measured
CHUNK_SENTENCES = 10_000  # sentences per write to the child's stdin


@dataclass
class TokenizerSet:
    src: Tokenizer
    tgt: Tokenizer  # the same object as src when shared
    shared: bool
    files: list[Path]  # the tokenizer json files in the run dir


# --- recipes -------------------------------------------------------------------------------


def new_tokenizer(kind: str) -> Tokenizer:
    """An untrained tokenizer of the given kind (training always starts from a BPE model)."""
    if kind == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation()])
        tokenizer.decoder = decoders.Metaspace()
    elif kind == "wordpiece":
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>", continuing_subword_prefix="##"))
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece(prefix="##")
    else:
        raise ConfigError(f"[tokenizer] kind = {kind!r}: must be one of bpe, wordpiece")
    return tokenizer


def new_trainer(kind: str, vocab_size: int, min_frequency: int,
                progress: bool = False) -> trainers.BpeTrainer:
    options: dict[str, Any] = {"continuing_subword_prefix": "##"} if kind == "wordpiece" else {}
    if progress:  # JSON lines on stderr (tokenizers >= 0.23); they print even without show_progress
        options["progress_format"] = "json"
    return trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                               special_tokens=SPECIALS, show_progress=progress, **options)


def finish_training(tokenizer: Tokenizer, kind: str) -> Tokenizer:
    """WordPiece keeps only the vocabulary of the BPE it was trained as (HF's from_bpe)."""
    if kind == "wordpiece":
        tokenizer.model = models.WordPiece(vocab=tokenizer.get_vocab(), unk_token="<unk>",
                                           continuing_subword_prefix="##")
    return tokenizer


def train_in_process(sentences: Iterable[str] | Iterable[list[str]], kind: str, vocab_size: int,
                     min_frequency: int, progress: bool = False) -> Tokenizer:
    """The bare library call; the child process runs exactly this."""
    tokenizer = new_tokenizer(kind)
    tokenizer.train_from_iterator(sentences, new_trainer(kind, vocab_size, min_frequency, progress))
    return finish_training(tokenizer, kind)


# --- files ---------------------------------------------------------------------------------


def check_tokenizer_file(path: Path, what: str = "") -> Tokenizer:
    """Load a tokenizer.json and check the special tokens; a bad file is a one-line error."""
    where = what or str(path)
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exception for any parse error
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise EngineError(f"{where}: not a valid tokenizer.json ({reason})") from None
    found = [tokenizer.id_to_token(i) for i in range(len(SPECIALS))]
    if found != SPECIALS:
        raise EngineError(f"{where}: ids 0-3 must be the special tokens {' '.join(SPECIALS)}, "
                          f"found {' '.join(str(t) for t in found)}")
    return tokenizer


def tokenizer_files(run_dir: Path, shared: bool, src_lang: str, tgt_lang: str) -> list[Path]:
    if shared:
        return [Path(run_dir) / "tokenizer.json"]
    return [Path(run_dir) / f"tokenizer.{lang}.json" for lang in (src_lang, tgt_lang)]


def load_tokenizer_set(run_dir: Path, config: "RunConfig") -> TokenizerSet:
    """The tokenizers an earlier run left in ``run_dir`` (for resuming training)."""
    shared = config.tokenizer.shared or bool(config.tokenizer.path)
    files = tokenizer_files(run_dir, shared, config.data.src_lang, config.data.tgt_lang)
    for path in files:
        if not path.is_file():
            raise EngineError(f"{path}: tokenizer file not found (run the tokenizer stage first)")
    loaded = [check_tokenizer_file(path) for path in files]
    return TokenizerSet(src=loaded[0], tgt=loaded[-1], shared=shared, files=files)


def _write_atomic(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)


# --- the stage -----------------------------------------------------------------------------


def run_tokenizer_stage(ctx: "RunContext") -> "StageResult":
    from engine.pipeline import StageResult

    started = time.monotonic()
    settings = ctx.config.tokenizer
    corpus = ctx.outputs["data"]
    run_dir = Path(ctx.run_dir)

    if settings.path:
        return _use_given(ctx, Path(settings.path).expanduser(), started)

    files = tokenizer_files(run_dir, settings.shared, corpus.src_lang, corpus.tgt_lang)
    key = {"recipe": RECIPE, "corpus": corpus.fingerprint(), "kind": settings.kind,
           "vocab_size": settings.vocab_size, "shared": settings.shared,
           "min_frequency": settings.min_frequency,
           "languages": [corpus.src_lang, corpus.tgt_lang]}
    reused = _reuse(run_dir, key, files)
    if reused is not None:
        loaded, info = reused
        info = {**info, "seconds": round(time.monotonic() - started, 3), "reused": True}
        return StageResult(output=TokenizerSet(src=loaded[0], tgt=loaded[-1],
                                               shared=settings.shared, files=files),
                           info=info, reused=True)

    if not corpus.train:
        raise DataError("data: the training split is empty; the tokenizer needs sentences to "
                        "learn from")
    (run_dir / META_FILE).unlink(missing_ok=True)  # what follows overwrites the old files
    if settings.shared:
        sides = [("", _both_sides(corpus.train))]
    else:
        sides = [(corpus.src_lang, _one_side(corpus.train, 0)),
                 (corpus.tgt_lang, _one_side(corpus.train, 1))]
    trained, results = [], []
    for (language, sentences), path in zip(sides, files):
        total = len(corpus.train) * (2 if settings.shared else 1)
        training = ChildTraining(ctx, sentences, total, path, language)
        results.append(training.run())
        trained.append(check_tokenizer_file(path))

    info = _totals(results, settings.kind, [lang for lang, _ in sides])
    info["seconds"] = round(time.monotonic() - started, 3)
    info["reused"] = False
    _write_atomic(run_dir / META_FILE, json.dumps(
        {"key": key, "files": [p.name for p in files], "info": info}, indent=2) + "\n")
    return StageResult(output=TokenizerSet(src=trained[0], tgt=trained[-1],
                                           shared=settings.shared, files=files), info=info)


def _both_sides(pairs: list[tuple[str, str]]) -> Iterator[str]:
    for src, _ in pairs:
        yield src
    for _, tgt in pairs:
        yield tgt


def _one_side(pairs: list[tuple[str, str]], side: int) -> Iterator[str]:
    for pair in pairs:
        yield pair[side]


def _totals(results: list[dict[str, int]], kind: str, languages: list[str]) -> dict[str, Any]:
    info: dict[str, Any] = {"kind": kind}
    for key in ("vocab_size", "merges", "unique_words", "alphabet"):
        info[key] = sum(result[key] for result in results)
    if len(results) > 1:  # per language: the sums above, and each vocabulary's size
        for language, result in zip(languages, results):
            info[f"vocab_size_{language}"] = result["vocab_size"]
    return info


def _reuse(run_dir: Path, key: dict[str, Any],
           files: list[Path]) -> tuple[list[Tokenizer], dict[str, Any]] | None:
    try:
        meta = json.loads((run_dir / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if meta.get("key") != key or not all(path.is_file() for path in files):
        return None
    try:
        loaded = [check_tokenizer_file(path) for path in files]
    except EngineError:
        return None  # damaged since: train again
    return loaded, dict(meta.get("info", {}))


def _use_given(ctx: "RunContext", path: Path, started: float) -> "StageResult":
    """``tokenizer.path``: one given tokenizer.json for both sides, copied into the run dir."""
    from engine.pipeline import StageResult

    tokenizer = check_tokenizer_file(path, f"[tokenizer] path = {str(path)!r}")
    target = Path(ctx.run_dir) / "tokenizer.json"
    if path.resolve() != target.resolve():
        temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.copyfile(path, temp)
        os.replace(temp, target)
    (Path(ctx.run_dir) / META_FILE).unlink(missing_ok=True)
    model = json.loads(tokenizer.to_str()).get("model", {}).get("type", "?")
    info = {"kind": str(model).lower(), "path": str(path), "vocab_size": tokenizer.get_vocab_size(),
            "seconds": round(time.monotonic() - started, 3), "reused": True}
    return StageResult(output=TokenizerSet(src=tokenizer, tgt=tokenizer, shared=True,
                                           files=[target]), info=info, reused=True)


# --- one training in a child process -------------------------------------------------------


class ChildTraining:
    """Stream sentences to a trainer child, report its progress, obey pause/resume/stop.

    Threads: a writer feeds stdin (and counts sentences and characters), a reader parses
    stderr; the stage's own thread polls both a few times a second and is the only one that
    emits events. Pause/resume/stop signal the child from whatever thread asked for them.
    """

    def __init__(self, ctx: "RunContext", sentences: Iterable[str], total: int, path: Path,
                 language: str) -> None:
        self.ctx, self.sentences, self.total, self.path = ctx, sentences, total, Path(path)
        self.language = language
        settings = ctx.config.tokenizer
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
        return time.monotonic() - self.t0 - (self.ctx.control.paused_so_far() - self.paused0)

    # --- main ---

    def run(self) -> dict[str, int]:
        control = self.ctx.control
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
        command = [sys.executable, "-m", "engine.tokenizer", "--kind", self.kind,
                   "--vocab-size", str(self.vocab_size),
                   "--min-frequency", str(self.min_frequency), "--out", str(self.temp)]
        with self.signal_lock:
            # A new session: Ctrl-C and a dropped SSH session reach the parent only, which
            # then stops the child itself.
            self.child = subprocess.Popen(command, stdin=subprocess.PIPE,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                          start_new_session=True)
            if self.ctx.control.paused:
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
        emit, control = self.ctx.emit, self.ctx.control
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
        """vocab_size must hold the specials and every character; fail as soon as it cannot."""
        needed = self.initial_vocab()
        if needed > self.vocab_size:
            raise ConfigError(
                f"[tokenizer] vocab_size = {self.vocab_size}: smaller than the alphabet of the "
                f"training text ({needed - len(SPECIALS):,} characters so far) plus "
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


# --- the child process ---------------------------------------------------------------------


def read_sentence_batches(stream: Any, block_size: int = 1 << 20) -> Iterator[list[str]]:
    """Lists of lines from a binary stream, a block at a time (cheaper than line by line)."""
    rest = b""
    while True:
        block = stream.read(block_size)
        if not block:
            break
        block = rest + block
        cut = block.rfind(b"\n") + 1
        rest = block[cut:]
        if cut:
            yield block[:cut - 1].decode("utf-8", "replace").split("\n")
    if rest:
        yield [rest.decode("utf-8", "replace")]


def _exit_with_parent() -> None:
    """A child whose parent died (killed hard) must not train on for minutes."""
    parent = os.getppid()
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(1)


def child_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m engine.tokenizer",
                                     description="train a tokenizer on the lines of stdin "
                                                 "(progress as JSON lines on stderr)")
    parser.add_argument("--kind", choices=("bpe", "wordpiece"), required=True)
    parser.add_argument("--vocab-size", type=int, required=True)
    parser.add_argument("--min-frequency", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    tokenizer = train_in_process(read_sentence_batches(sys.stdin.buffer), args.kind,
                                 args.vocab_size, args.min_frequency, progress=True)
    tokenizer.save(str(args.out))


if __name__ == "__main__":
    child_main()
