"""The checks a run makes before any stage, so that bad input fails at once, in one line, with
nothing in the run directory changed: the run directory itself, the ``--resume`` checkpoint and
a given ``tokenizer.path``. (Config values are checked when the config loads, engine/config.py.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from engine import atomic
from engine.config import RunConfig
from engine.errors import ConfigError, EngineError

# [data] keys that do not change what the tokenizer is trained on
_NOT_TOKENIZER_DATA = {"valid_size", "test_size", "valid_src", "valid_tgt", "test_src", "test_tgt"}


def check_run_inputs(config: RunConfig, run_dir: Path, resume: str | None = None) -> None:
    """Raise an EngineError naming the input and what is accepted; read-only."""
    check_run_dir(run_dir)
    check_tokenizer_path(config)
    if resume:
        check_resume(config, run_dir, resume)


def check_run_dir(run_dir: Path) -> None:
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run directory {run_dir}: is a file, not a directory (give a "
                          "directory; a missing one is created)")
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # the directory the run dir will be created in
    if _read_only(existing):
        raise ConfigError(f"run directory {run_dir}: on a read-only filesystem "
                          f"{atomic.mount_of(existing)} (give a directory on a writable disk)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"run directory {run_dir}: {existing} is not writable by this user "
                          "(give a directory you can write)")


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_tokenizer_path(config: RunConfig) -> None:
    """A given tokenizer.json must have the configured vocabulary size."""
    given = config.tokenizer.path
    if not given:
        return
    from engine.tokenizer.stage import check_tokenizer_file

    where = f"{config.source}: [tokenizer] path = {given!r}"
    size = check_tokenizer_file(Path(given).expanduser(), where).get_vocab_size()
    if size != config.tokenizer.vocab_size:
        raise ConfigError(f"{where}: this tokenizer has {size:,} tokens but [tokenizer] "
                          f"vocab_size = {config.tokenizer.vocab_size:,} (set tokenizer.vocab_size"
                          f" = {size} or give a tokenizer of {config.tokenizer.vocab_size:,})")


def check_resume(config: RunConfig, run_dir: Path, resume: str) -> None:
    """The ``--resume`` checkpoint exists, is one, and was trained with this run's model shape,
    data and tokenizer settings (else the tokenizer stage would rewrite the run's tokenizer
    before the model stage refused the checkpoint)."""
    from engine import checkpoint as ckpt

    path = ckpt.resume_path(resume, run_dir)
    if not path.is_file():
        raise EngineError(f"--resume {resume}: {path} not found (give checkpoint_last.pt, "
                          "checkpoint_best.pt or a model_epoch_N.pt of the run)")
    state = ckpt.load_checkpoint(path, mmap=True)
    saved: dict[str, Any] = state["config"]
    here = config.to_dict()
    for key in ckpt.SHAPE_KEYS:
        _same(path, "model", key, saved, here)
    for key in here["tokenizer"]:
        _same(path, "tokenizer", key, saved, here)
    for key in here["data"]:
        if key not in _NOT_TOKENIZER_DATA:
            _same(path, "data", key, saved, here)


def _same(path: Path, section: str, key: str, saved: dict[str, Any],
          here: dict[str, Any]) -> None:
    if key not in saved.get(section, {}):
        return  # a checkpoint from before the key existed
    was, now = saved[section][key], here[section][key]
    if was != now:
        raise EngineError(f"--resume {path}: the checkpoint was trained with {section}.{key} = "
                          f"{was!r}, this run has {now!r} (resume with the config that trained "
                          "it)")
