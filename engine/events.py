"""Events: the only way the engine reports what it does.

Every event is a small frozen dataclass. Consumers (the headless printer, the JSONL writer, the
TUI) receive them through one ``emit(event)`` callable. ``to_json``/``from_json`` round-trip an
event through one JSON object a line, which is what ``events.jsonl`` holds and ``--attach`` reads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from engine import atomic
from engine.errors import EngineError

Emit = Callable[["Event"], None]

EVENT_TYPES: dict[str, type["Event"]] = {}


class Event:
    """Base class; subclasses register themselves by class name for ``from_json``."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        EVENT_TYPES[cls.__name__] = cls


# --- run lifecycle -------------------------------------------------------------------------


@dataclass(frozen=True)
class RunStarted(Event):
    run_dir: str
    preset: str
    stages: list[str]
    processes: int = 1  # torchrun ranks in the job
    # what ran: torch, cuda, cudnn, nccl, driver, device (engine/device.py versions); the keys
    # a machine lacks are left out, and runs from before this field read back as {}
    versions: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Preflight(Event):
    device: str  # "cuda" or "cpu"
    device_names: list[str]  # GPU names, or the CPU model
    device_memory_gb: list[float]  # per GPU; empty on CPU
    threads: int
    disk_free_gb: float
    disk_needed_gb: float
    warning: str = ""  # non-empty when something looks wrong (low disk, ...)


@dataclass(frozen=True)
class StageStarted(Event):
    stage: str
    index: int  # 1-based position among the stages of this run
    total: int


@dataclass(frozen=True)
class StageFinished(Event):
    stage: str
    seconds: float
    reused: bool = False
    info: dict[str, Any] = field(default_factory=dict)  # stage totals, for display


@dataclass(frozen=True)
class Notice(Event):
    """A human-readable line: a warning, or something worth knowing (dropped pairs, ...)."""

    text: str
    level: str = "info"  # info | warning


@dataclass(frozen=True)
class RunPaused(Event):
    stage: str


@dataclass(frozen=True)
class RunResumed(Event):
    stage: str
    paused_seconds: float


@dataclass(frozen=True)
class RunFailed(Event):
    stage: str
    message: str  # one line, names what was wrong
    details: list[str] = field(default_factory=list)  # e.g. a child process's last stderr lines


@dataclass(frozen=True)
class RunFinished(Event):
    status: str  # finished | stopped
    seconds: float


# --- data and encode stages ----------------------------------------------------------------


@dataclass(frozen=True)
class DataProgress(Event):
    """Pairs of one split read so far by the data stage (a few a second, then the final count)."""

    split: str  # train | valid | test
    pairs: int
    total: int = 0  # the pairs asked for (train_size), 0 when not known ahead
    per_second: float = 0.0
    elapsed: float = 0.0
    final: bool = False  # the split is read: ``pairs`` is its size


@dataclass(frozen=True)
class DownloadProgress(Event):
    """One of the progress bars of ``datasets``/``huggingface_hub`` (downloading a file,
    generating a split), routed into events instead of being drawn on stderr."""

    what: str  # the library's own label, e.g. "Downloading data" or "Generating train split"
    done: float  # in ``unit``s
    total: float = 0.0  # 0 when the library does not know
    unit: str = "B"  # "B" (bytes) or what the library counts ("examples", "files")
    per_second: float = 0.0
    eta: float = 0.0  # seconds; 0 when unknown
    elapsed: float = 0.0
    final: bool = False  # this bar has finished


@dataclass(frozen=True)
class EncodeProgress(Event):
    """Pairs of one split encoded so far (a few a second at most, then the final count)."""

    split: str  # train | valid | test
    done: int
    total: int
    per_second: float = 0.0
    eta: float = 0.0  # seconds to the end of this split
    elapsed: float = 0.0


# --- tokenizer stage -----------------------------------------------------------------------


@dataclass(frozen=True)
class WordCountProgress(Event):
    done: int  # sentences counted so far
    total: int
    per_second: float
    elapsed: float


@dataclass(frozen=True)
class MergeProgress(Event):
    merges: int
    target_merges: int  # vocab_size minus alphabet and specials
    vocab_size: int
    target_vocab: int
    per_second: float  # over a short window
    eta: float  # seconds, excluding paused time
    elapsed: float
    language: str = ""  # "" for a shared tokenizer, else the language being trained


# --- training stage ------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchProgress(Event):
    epoch: int
    epochs: int
    batch: int  # 1-based, within the epoch
    batches: int
    step: int  # optimizer updates so far
    loss: float
    avg_loss: float  # running average over the epoch
    lr: float
    batches_per_second: float
    tokens_per_second: float  # target tokens
    eta: float  # seconds to the end of the epoch
    elapsed: float
    gnorm: float | None = None  # the last update's gradient norm (before clipping)
    loss_scale: float | None = None  # fp16's GradScaler scale, None in other precisions
    max_updates: int = 0  # training.max_updates: the run ends at step == this (0: by epochs)
    run_eta: float | None = None  # seconds to the end of training at this speed (no validation)


@dataclass(frozen=True)
class EpochSummary(Event):
    epoch: int
    epochs: int
    step: int
    train_loss: float
    train_ppl: float
    val_loss: float
    val_ppl: float
    bleu: float | None
    epoch_seconds: float
    total_seconds: float


@dataclass(frozen=True)
class SampleTranslations(Event):
    """At each validation: the same few validation sentences, translated by the model as it is
    now (eval.print_samples of them), to read progress in words, not only numbers."""

    epoch: int  # epochs completed (the validation after epoch ``epoch``)
    step: int
    samples: list[dict[str, str]]  # each {"source", "reference", "hypothesis"}


@dataclass(frozen=True)
class TestBleu(Event):
    """The test split decoded once training has ended (finished or stopped), scored two ways:
    sacreBLEU (detokenized, what to quote) and the paper's tokenized, compound-split BLEU
    (what to compare with the paper's 27.3; reads higher)."""

    checkpoint: str  # the weights decoded: averaged.pt, else checkpoint_last.pt
    sentences: int
    sacrebleu: float
    sacrebleu_signature: str
    paper_bleu: float
    paper_signature: str
    beam: int
    length_penalty: float
    seconds: float  # decoding and scoring
    averaged_from: list[str] = field(default_factory=list)  # names of the checkpoints averaged


@dataclass(frozen=True)
class CheckpointSaved(Event):
    path: str
    name: str
    epoch: int
    step: int
    val_loss: float | None
    bleu: float | None
    size_bytes: int
    saved_at: float  # unix time


@dataclass(frozen=True)
class BatchSkipped(Event):
    reason: str  # "oom" | "nan"
    epoch: int
    batch: int
    tokens: int
    in_a_row: int


@dataclass(frozen=True)
class MemorySample(Event):
    devices: list[dict[str, Any]]  # NVML per GPU: name, used, total, util (None = n/a)
    torch_allocated: int | None  # bytes, this process, None without CUDA
    torch_reserved: int | None
    torch_peak: int | None  # during training: since the current batch began (reset per batch)
    process_rss: int
    system_used: int
    system_total: int
    max_tokens: int
    # for tuning max_tokens against out-of-memory errors (peaks: the CUDA allocator's on a GPU,
    # the process's resident memory on the CPU; bytes)
    budget: int = 0  # what training may use: training.memory_budget, the GPU's memory, or RAM
    recent_peak: int | None = None  # the highest batch peak since the previous sample
    largest_batch_peak: int | None = None  # the highest batch peak of the run so far ...
    largest_batch: list[int] = field(default_factory=list)  # ... its [rows, src len, tgt len]
    headroom: int | None = None  # budget - largest_batch_peak
    oom_skipped: int = 0  # batches skipped for running out of memory
    fit_max_tokens: int | None = None  # the fit's recommendation (fit.json), if made


# --- serialisation -------------------------------------------------------------------------


def to_json(event: Event) -> str:
    payload = {"event": type(event).__name__, **dataclasses.asdict(event)}
    return json.dumps(payload, separators=(",", ":"))


def from_json(line: str) -> Event:
    payload = json.loads(line)
    name = payload.pop("event")
    payload.pop("time", None)
    cls = EVENT_TYPES.get(name)
    if cls is None:
        raise ValueError(f"unknown event type {name!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in payload.items() if k in known})


class JsonlWriter:
    """Appends every event to ``events.jsonl`` with a wall-clock time; safe across threads.

    Never leaves a torn line: a line is appended whole or, when the disk refuses part of it,
    cut off again; a file that already ends in a torn line (an older writer's) gets a newline
    first, so the first event of this run starts a line of its own and reads back.
    When the disk refuses a line, the writer raises one EngineError and drops later events
    (the run is failing then; its RunFailed still reaches the other consumers).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()
        self.failed = ""  # the storage error that stopped this writer, if any
        size = os.fstat(self._fd).st_size
        if size and os.pread(self._fd, 1, size - 1) != b"\n":
            self._append(b"\n")

    def __call__(self, event: Event) -> None:
        payload = to_json(event)
        line = payload[:-1] + f',"time":{time.time():.3f}}}\n'
        with self._lock:
            if not self.failed:
                self._append(line.encode("utf-8"))

    def _append(self, data: bytes) -> None:
        start = os.fstat(self._fd).st_size
        try:
            while data:
                data = data[os.write(self._fd, data):]
        except OSError as exc:
            try:
                os.ftruncate(self._fd, start)  # take back the part that was written
            except OSError:
                pass
            if atomic.storage_error(exc) is None:
                raise
            self.failed = atomic.storage_message(exc, self.path, f"writing {self.path.name}")
            raise EngineError(self.failed) from None

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def read_events(path: Path) -> Iterator[Event]:
    """Events of a finished (or growing) file, skipping a last line still being written and
    a torn line an interrupted writer left (the next writer starts after it on a new line)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.endswith("\n") and line.strip():
                try:
                    event = from_json(line)
                except (ValueError, TypeError, KeyError):
                    continue
                yield event


def fan_out(*consumers: Emit) -> Emit:
    """One emit that hands each event to several consumers, in order."""

    def emit(event: Event) -> None:
        for consumer in consumers:
            consumer(event)

    return emit
