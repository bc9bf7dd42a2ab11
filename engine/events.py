"""Events: the only way the engine reports what it does.

Every event is a small frozen dataclass. Consumers (the headless printer, the JSONL writer, the
TUI) receive them through one ``emit(event)`` callable. ``to_json``/``from_json`` round-trip an
event through one JSON object a line, which is what ``events.jsonl`` holds; ``JsonlWriter``
writes that file and ``engine.eventlog`` reads it (whole, or as it grows).
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

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
class Alert(Event):
    """Something a person away from the run should hear about (engine/alerts.py raises them and
    hands them to the [notify] command): a run finished, failed, stopped, diverged, stalled,
    skipped batches for out of memory, or reached a target."""

    kind: str  # finished | failed | stopped | diverged | oom | stalled | target
    text: str  # one line, e.g. "run saved/full finished: test BLEU 27.1"


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
    cpu_seconds: float | None = None  # the run process's CPU time (cpu_seconds()); None before


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
    cpu_seconds: float | None = None  # the run process's CPU time so far; None in older runs


@dataclass(frozen=True)
class SampleTranslations(Event):
    """At each validation: the same few validation sentences, translated by the model as it is
    now (eval.print_samples of them), to read progress in words, not only numbers."""

    epoch: int  # epochs completed (the validation after epoch ``epoch``)
    step: int
    samples: list[dict[str, str]]  # each {"source", "reference", "hypothesis"}


@dataclass(frozen=True)
class TestBleu(Event):
    """The test split decoded once training has ended (finished or stopped), scored three ways:
    sacreBLEU (detokenized, cased, what to quote), sacreBLEU lowercased (what the Multi30k
    literature reports) and the paper's tokenized, compound-split BLEU (what to compare with
    the paper's 27.3 on WMT14; reads higher)."""

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
    # which weights: "averaged" (the final stretch of a finished run), "last" (the weights at
    # the end), "best" (checkpoint_best.pt: a stopped run reports it beside its last); "" before
    role: str = ""
    # lowercased sacreBLEU (case:lc); None in runs from before it was reported
    lowercase_bleu: float | None = None
    lowercase_signature: str = ""


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
    # NVML per GPU (None = n/a): name, label, uuid, used, total, util, processes
    # ([{pid, name, used}]) and processes_error (why they are n/a); older runs: the first five
    devices: list[dict[str, Any]]
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
    fit_peak: int | None = None  # the peak the fit measured at this max_tokens, if it did
    device: str = ""  # the device the peaks are of: torch's "cuda:0", or "cpu"
    pids: list[int] = field(default_factory=list)  # the run's processes on this host (every rank)


# --- serialisation -------------------------------------------------------------------------


TIME = "time"  # JsonlWriter adds the wall-clock time of the event to its line


def cpu_seconds() -> float:
    """CPU seconds this process has used (every thread), and the child processes it waited
    for (the tokenizer's): what EpochSummary and RunFinished record as ``cpu_seconds``."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return round(time.process_time() + children.ru_utime + children.ru_stime, 3)


def to_json(event: Event) -> str:
    payload = {"event": type(event).__name__, **dataclasses.asdict(event)}
    return json.dumps(payload, separators=(",", ":"))


def to_line(event: Event, at: float) -> str:
    """One line of events.jsonl: the event's JSON with the time it happened, and a newline."""
    return to_json(event)[:-1] + f',"{TIME}":{at:.3f}}}\n'


def from_json(line: str | bytes) -> Event:
    """The event of one JSON line (its time, if any, dropped). ValueError when the line is not
    an event this version reads: not JSON, not an object, an unknown event type, a field missing
    or of the wrong type. Fields this version does not know are ignored; missing ones that have
    a default take it (an older or newer engine's events)."""
    payload = json.loads(line)
    if not isinstance(payload, dict):
        raise ValueError(f"not a JSON object: {str(payload)[:40]}")
    return from_dict(payload)


def from_dict(payload: dict[str, Any]) -> Event:
    """``from_json`` of an already parsed line."""
    name = payload.get("event")
    cls = EVENT_TYPES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown event type {name!r}")
    values = {}
    for key, (check, type_name, required) in _fields(cls).items():
        if key in payload:
            try:
                values[key] = check(payload[key])
            except TypeError:
                raise ValueError(f"{name}.{key} = {str(payload[key])[:40]!r}: not "
                                 f"{type_name}") from None
        elif required:
            raise ValueError(f"{name}: no {key}")
    return cls(**values)


# Every line read is checked against the dataclass annotations, so that a value of the wrong
# type (a loss written as a string, a list where a number belongs) is refused where the file is
# read, not found deep inside whatever shows it. Check: the value, or raise TypeError.
Check = Callable[[Any], Any]
_FIELDS: dict[type, dict[str, tuple[Check, str, bool]]] = {}  # per class: name -> check, ...


def _fields(cls: type) -> dict[str, tuple[Check, str, bool]]:
    """name -> (check, type name, required) of each field of an event class, made once."""
    if cls not in _FIELDS:
        hints = typing.get_type_hints(cls)
        _FIELDS[cls] = {f.name: (_check_for(hints[f.name]), _type_name(hints[f.name]),
                                 f.default is f.default_factory is dataclasses.MISSING)
                        for f in dataclasses.fields(cls)}
    return _FIELDS[cls]


def _check_for(hint: Any) -> Check:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return lambda value: value
    if hint is float:  # an int where a float belongs is a float (JSON writes 3.0 as 3.0, not 3)
        return lambda value: float(value) if type(value) in (int, float) else _refuse()
    if hint in (int, str, bool):  # (to type(), unlike isinstance, True is no int)
        return lambda value: value if type(value) is hint else _refuse()
    if origin in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
        inner = _check_for(next(arg for arg in args if arg is not type(None)))
        return lambda value: None if value is None else inner(value)
    if origin is list:
        item = _check_for(args[0])
        return lambda value: [item(v) for v in value] if type(value) is list else _refuse()
    if origin is dict:
        entry = _check_for(args[1])
        return lambda value: ({k: entry(v) for k, v in value.items()} if type(value) is dict
                              else _refuse())
    raise TypeError(f"no check for a field of type {hint}")  # a new kind of field: add it here


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _refuse() -> Any:
    raise TypeError


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
        line = to_line(event, time.time())
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


def fan_out(*consumers: Emit) -> Emit:
    """One emit that hands each event to several consumers, in order."""

    def emit(event: Event) -> None:
        for consumer in consumers:
            consumer(event)

    return emit
