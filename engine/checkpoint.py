"""Save and resume: checkpoints as plain dicts of tensors and plain values, written atomically,
loaded safely, and checked against the run that resumes from them.

A checkpoint holds everything a run needs to continue at the next batch and everything
``translate`` needs on its own:

    model, optimizer, scheduler, scaler (or None)      state dicts
    epoch, batch_in_epoch, epoch_nll, epoch_tokens, train_loss, val_loss, bleu, best,
    best_val_loss, run_id, seconds, batches_per_epoch   the training counters: ``Progress``
    step             optimizer updates so far
    rng              torch CPU/CUDA generator states (tensors), python and numpy states (lists)
    config, run_name the resolved RunConfig as a dict
    versions         what trained it: {torch, cuda, cudnn, nccl, driver, device} (engine/device.py)
    vocab            {"src_size", "tgt_size", "shared"}
    tokenizers       {"src": tokenizer.json text, "tgt": ...}
    world_size       processes that trained it (torchrun); batch_in_epoch counts each one's
    rank_rng         with several processes: each rank's torch generator state, in rank order

No pickled objects: ``torch.load(path, weights_only=True)`` reads it. Writing is atomic
(engine/atomic.py): a crash or a ``kill -9`` at any moment leaves either the old checkpoint or
the new one, never half of one; a full or read-only disk is one EngineError line that says the
previous checkpoint is intact.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from engine import atomic
from engine.errors import EngineError
from engine.versions import versions

if TYPE_CHECKING:
    from engine.config import ModelConfig, RunConfig
    from engine.tokenizer.stage import TokenizerSet
    from engine.train.state import TrainingState

LAST, BEST, AVERAGED = "checkpoint_last.pt", "checkpoint_best.pt", "averaged.pt"
PERIODIC = re.compile(r"model_epoch_(\d+)\.pt$")
UPDATE = re.compile(r"checkpoint_update_(\d+)\.pt$")  # periodic by updates (training.max_updates)
TEMP_PREFIX = ".ckpt-"
# model keys that decide the shapes of the weights (dropout does not)
SHAPE_KEYS = ("d_model", "ffn_hidden", "n_head", "n_layers", "pre_norm")


def periodic_name(epoch: int) -> str:
    return f"model_epoch_{epoch}.pt"


def update_name(step: int) -> str:
    return f"checkpoint_update_{step}.pt"


# --- the training counters -----------------------------------------------------------------


@dataclass
class Progress:
    """Where training stands, beyond the weights: what a resumed run continues from."""

    epoch: int = 0  # epochs completed
    batch_in_epoch: int = 0  # batches of epoch + 1 done (per rank in a torchrun job)
    epoch_nll: float = 0.0  # NLL and target tokens of epoch + 1 so far: its average stays exact
    epoch_tokens: int = 0
    train_loss: float | None = None
    val_loss: float | None = None
    bleu: float | None = None
    best: float | None = None  # best val loss (or BLEU), what checkpoint_best.pt holds
    best_val_loss: float | None = None  # lowest validation loss: the divergence guard's yardstick
    run_id: str = ""  # one run's checkpoints share it, across resumes (average refuses a mix)
    since_best: int = 0  # validations since ``best`` last improved (training.patience)
    seconds: float = 0.0  # training time so far, pauses excluded, across resumes
    batches_per_epoch: int = 0
    # the periodic checkpoints (file names) this run wrote, across resumes: keep_last prunes
    # only these, never another run's files that happen to share the directory
    periodic: list[str] = dataclasses.field(default_factory=list)

    def to_state(self) -> dict[str, Any]:
        """The checkpoint's keys for these counters (top level, as in every checkpoint so far)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Progress":
        """The counters of a checkpoint; a key an older checkpoint lacks keeps its default."""
        return cls(**{f.name: state[f.name] for f in dataclasses.fields(cls) if f.name in state})


def checkpoint_state(training_state: "TrainingState", config: "RunConfig",
                     tokenizers: "TokenizerSet", world_size: int = 1,
                     progress: Progress | None = None,
                     rng: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything a run needs to continue at the next batch, and ``translate`` on its own:
    ``training_state``'s model, optimizer, schedule, scaler and precision, with the config and
    tokenizers.

    ``progress``, ``rng``: counters and generator states taken earlier at the update boundary
    these weights belong to (default: ``training_state``'s now).
    """
    progress = progress or training_state.progress
    return {
        "model": training_state.model.state_dict(),
        "optimizer": training_state.optimizer.state_dict(),
        "scheduler": training_state.schedule.state_dict(),
        "scaler": training_state.scaler.state_dict() if training_state.scaler is not None else None,
        **progress.to_state(),
        "step": training_state.schedule.updates,
        "world_size": world_size,  # batch_in_epoch counts each rank's batches
        "rng": rng or rng_state(),
        "config": config.to_dict(), "run_name": config.name,
        "precision": training_state.precision,
        "versions": versions(training_state.device.type),  # what trained it: torch, CUDA, ...
        "vocab": {"src_size": tokenizers.src.get_vocab_size(),
                  "tgt_size": tokenizers.tgt.get_vocab_size(),
                  "shared": bool(tokenizers.shared)},
        "tokenizers": {"src": tokenizers.src.to_str(), "tgt": tokenizers.tgt.to_str()},
    }


# --- writing -------------------------------------------------------------------------------


def save_checkpoint(state: dict[str, Any], path: Path) -> int:
    """Write ``state`` to ``path`` atomically; returns the file's size in bytes."""
    path = Path(path)
    try:
        with atomic.atomic_file(path, prefix=TEMP_PREFIX) as f:
            torch.save(state, f)
    except Exception as exc:  # the temporary file is gone; the previous checkpoint untouched
        refused = atomic.storage_error(exc)
        if refused is None:
            raise
        intact = "the previous checkpoint is intact" if path.is_file() else "nothing was written"
        raise EngineError(atomic.storage_message(refused, path, f"saving {path.name}") +
                          f"; {intact}") from None
    return path.stat().st_size


def copy_checkpoint(source: Path, path: Path) -> int:
    """``path`` becomes the same checkpoint as ``source``, atomically (a hard link where the
    filesystem has them: no second write of a large file)."""
    source, path = Path(source), Path(path)
    tmp = atomic.temporary_name(path, prefix=TEMP_PREFIX)
    try:
        os.link(source, tmp)
    except OSError:
        return save_checkpoint(load_checkpoint(source), path)
    try:
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if atomic.storage_error(exc) is None:
            raise
        raise EngineError(atomic.storage_message(exc, path, f"saving {path.name}") +
                          "; the previous checkpoint is intact") from None
    atomic.fsync_dir(path.parent)
    return path.stat().st_size


def remove_stale_temporaries(directory: Path) -> None:
    """Temporary files a killed process left behind."""
    for tmp in Path(directory).glob(f"{TEMP_PREFIX}*{atomic.TEMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)


def periodic_checkpoints(directory: Path, by_updates: bool = False) -> list[Path]:
    """A run directory's model_epoch_N.pt files (``by_updates``: checkpoint_update_N.pt),
    oldest first."""
    pattern = UPDATE if by_updates else PERIODIC
    found = sorted((int(m.group(1)), p) for p in Path(directory).iterdir()
                   if (m := pattern.match(p.name)))
    return [p for _, p in found]


def prune_periodic(directory: Path, keep_last: int, written: list[str],
                   by_updates: bool = False) -> list[Path]:
    """Delete all but the newest ``keep_last`` model_epoch_N.pt (``by_updates``:
    checkpoint_update_N.pt; 0 keeps all) among those named in ``written`` (the ones this run
    wrote); returns removed."""
    if keep_last <= 0:
        return []
    ours = [p for p in periodic_checkpoints(directory, by_updates) if p.name in set(written)]
    removed = ours[:-keep_last]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


# --- random generator states ----------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "python": {"version": version, "state": list(mt), "gauss": gauss},
             "numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)},
             "cuda": _cuda_rng_states()}
    return state


def _cuda_rng_states() -> list:
    """Every GPU's generator, only once this process uses CUDA: asking for it otherwise would
    start CUDA on each GPU (memory, seconds) in a CPU run on a GPU machine."""
    return torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], np.array(npy["keys"], dtype=np.uint32), npy["pos"],
                         npy["has_gauss"], npy["cached"]))
    cuda = state.get("cuda") or []
    # restored where this process trains on CUDA (the model is there already, so CUDA is up)
    if cuda and torch.cuda.is_initialized() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# --- reading -------------------------------------------------------------------------------


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu",
                    mmap: bool = False) -> dict[str, Any]:
    """The checkpoint's dict; an EngineError with one line when it is missing or not one.
    ``mmap``: tensors stay in the file until touched (a quick look at a large checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise EngineError(f"{path}: checkpoint not found")
    # random bytes, a cut download, another format: refused before torch reads them (its
    # legacy unpickler would warn about whatever "protocol" the first bytes happen to say)
    if not zipfile.is_zipfile(path):
        raise EngineError(f"{path}: not a transformer-tui checkpoint or damaged (not a PyTorch "
                          "zip file)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # truncated, damaged, or holds objects we do not load
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in first or "Weights only" in first:
            reason = "it holds Python objects, which are not loaded"  # pickled code: refused
        else:
            reason = first.rstrip(".")[:120]
        raise EngineError(f"{path}: not a transformer-tui checkpoint or damaged ({reason})"
                          ) from None
    required = ("model", "config", "vocab", "tokenizers")
    missing = [k for k in required if not isinstance(state, dict) or k not in state]
    if missing:
        raise EngineError(f"{path}: not a transformer-tui checkpoint "
                          f"(missing {', '.join(missing)})")
    return state


def check_fits(state: dict[str, Any], path: Path | str, model_config: "ModelConfig", src_vocab: int,
               tgt_vocab: int, shared: bool) -> None:
    """Refuse, in one line, a checkpoint whose weights cannot fit the model this run builds."""
    saved_model = state["config"].get("model", {})
    for key in SHAPE_KEYS:
        here = getattr(model_config, key)
        if key in saved_model and saved_model[key] != here:
            raise EngineError(f"{path}: checkpoint has model.{key} = {saved_model[key]!r}, this "
                              f"run has {here!r} (resume with the config that trained it)")
    vocab = state["vocab"]
    for key, here in (("src_size", src_vocab), ("tgt_size", tgt_vocab), ("shared", shared)):
        if vocab.get(key) != here:
            raise EngineError(f"{path}: checkpoint has vocabulary {key} = {vocab.get(key)!r}, "
                              f"this run's tokenizer has {here!r} (resume with the tokenizer "
                              "that trained it)")


def load_model_state(model: torch.nn.Module, state: dict[str, Any], path: Path | str) -> None:
    """load_state_dict, with a shape mismatch turned into one line instead of a traceback."""
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        detail = next((line.strip() for line in str(exc).splitlines()
                       if "size mismatch" in line or "Missing key" in line
                       or "Unexpected key" in line), str(exc).splitlines()[0])
        raise EngineError(f"{path}: checkpoint weights do not fit the model "
                          f"({detail[:200]})") from None


# --- resuming ------------------------------------------------------------------------------


def resume_path(resume: str, run_dir: Path) -> Path:
    """``--resume last`` (the run directory's checkpoint_last.pt) or a checkpoint's path."""
    if resume == "last":
        path = Path(run_dir) / LAST
        if not path.is_file():
            raise EngineError(f"--resume last: no {LAST} in {run_dir} (nothing to "
                              "resume; give a checkpoint path or start without --resume)")
        return path
    return Path(resume).expanduser()


def check_same_tokenizers(state: dict[str, Any], tokenizers: "TokenizerSet", path: Path) -> None:
    from tokenizers import Tokenizer

    for side in ("src", "tgt"):
        saved = state["tokenizers"][side]
        here = getattr(tokenizers, side)
        if saved != here.to_str() and Tokenizer.from_str(saved).get_vocab() != here.get_vocab():
            raise EngineError(f"{path}: checkpoint was trained with another {side} tokenizer "
                              "than this run's (same size, different tokens); resume in the "
                              "run directory that trained it")


def load_for_resume(resume: str, run_dir: Path, model_config: "ModelConfig",
                    tokenizers: "TokenizerSet") -> tuple[Path, dict[str, Any]]:
    """(path, state) of the checkpoint ``--resume`` names, refused in one line when it cannot
    continue this run (other model shape, other vocabulary, other tokenizer)."""
    path = resume_path(resume, run_dir)
    state = load_checkpoint(path)  # CPU: RNG states must stay there
    check_fits(state, path, model_config, tokenizers.src.get_vocab_size(),
               tokenizers.tgt.get_vocab_size(), bool(tokenizers.shared))
    check_same_tokenizers(state, tokenizers, path)
    return path, state


def restore_training(training_state: "TrainingState", state: dict[str, Any],
                     path: Path) -> None:
    """Weights, optimizer, schedule, scaler, counters and random generators from ``state``."""
    load_model_state(training_state.model, state, path)
    training_state.optimizer.load_state_dict(state["optimizer"])
    training_state.schedule.load_state_dict(state["scheduler"])
    if training_state.scaler is not None and state.get("scaler"):
        training_state.scaler.load_state_dict(state["scaler"])
    training_state.progress = Progress.from_state(state)
    set_rng_state(state["rng"])


# --- translating ---------------------------------------------------------------------------


def build_for_inference(path: Path | str, device: str | torch.device = "cpu"):
    """(model in eval mode, src tokenizer, tgt tokenizer, RunConfig) from one checkpoint file."""
    from tokenizers import Tokenizer

    from engine.config import config_from_dict
    from engine.errors import ConfigError
    from engine.model import Transformer

    state = load_checkpoint(path, map_location="cpu")
    try:
        config = config_from_dict(state["config"], name=state.get("run_name", Path(path).stem),
                                  source=str(path))
    except ConfigError as exc:
        raise EngineError(f"{path}: checkpoint config is not valid here ({exc})") from None
    try:
        src_tok = Tokenizer.from_str(state["tokenizers"]["src"])
        tgt_tok = Tokenizer.from_str(state["tokenizers"]["tgt"])
    except Exception as exc:
        raise EngineError(f"{path}: checkpoint tokenizers cannot be read ({exc})") from None
    vocab = state["vocab"]
    model = Transformer.from_config(config.model, vocab["src_size"], vocab["tgt_size"],
                                    share_embeddings=vocab["shared"])
    load_model_state(model, state, path)
    return model.to(device).eval(), src_tok, tgt_tok, config


def average_checkpoints(paths: list[Path]) -> dict[str, Any]:
    """A checkpoint whose model weights are the mean of those of ``paths`` (the paper averages
    the last 5 of the base model). Optimizer and schedule are dropped: it is for translating.
    One checkpoint is in memory at a time (plus the running sum): the big model's last 20 fit."""
    if not paths:
        raise EngineError("no checkpoints to average")
    first = load_checkpoint(paths[0])
    total = {k: v.double() for k, v in first["model"].items() if v.is_floating_point()}
    last = first
    for path in paths[1:]:
        state = load_checkpoint(path)
        same_shapes = state["model"].keys() == first["model"].keys() and all(
            state["model"][k].shape == v.shape for k, v in first["model"].items())
        if state["vocab"] != first["vocab"] or not same_shapes:
            raise EngineError(f"{path}: other vocabulary or model shape than {paths[0]}; "
                              "average checkpoints of one run")
        if state.get("run_id") and first.get("run_id") and state["run_id"] != first["run_id"]:
            raise EngineError(f"{path}: from another run than {paths[0]} (run id "
                              f"{state['run_id'][:8]} vs {first['run_id'][:8]}); average "
                              "checkpoints of one run")
        for key in total:
            total[key] += state["model"][key].double()
        last = state
    model = {}
    for key, value in first["model"].items():
        if key in total:
            model[key] = (total[key] / len(paths)).to(value.dtype)
        else:  # integer buffers (none today) are taken from the newest checkpoint
            model[key] = last["model"][key]
    averaged = {k: last[k] for k in ("config", "vocab", "tokenizers", "epoch", "step", "run_name",
                                     "run_id", "versions") if k in last}
    averaged.update(model=model, averaged_from=[str(p) for p in paths],
                    val_loss=None, bleu=None, train_loss=None)
    return averaged
