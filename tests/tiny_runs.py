"""A real run shrunk to seconds: the sample preset with a tiny corpus, vocabulary and model."""

from __future__ import annotations

import copy

from engine.config import RunConfig, config_from_dict
from engine.control import RunControl
from engine.pipeline import run

TINY = {
    "data": {"source": "sample", "train_size": 400, "valid_size": 40, "test_size": 10},
    "tokenizer": {"vocab_size": 300, "min_frequency": 1},
    "model": {"d_model": 32, "ffn_hidden": 64, "n_head": 2, "n_layers": 1, "max_len": 48},
    "training": {"epochs": 2, "max_tokens": 500, "warmup": 30, "lr_factor": 2.0,
                 "precision": "fp32", "checkpoint_every": 1, "keep_last": 1, "seed": 3},
    "eval": {"bleu_every": 0},
}


def tiny_config(**changes) -> RunConfig:
    """TINY with changes given as section__key=value, e.g. training__epochs=3."""
    raw = copy.deepcopy(TINY)
    for key, value in changes.items():
        section, _, name = key.partition("__")
        raw.setdefault(section, {})[name] = value
    return config_from_dict(raw, name="tiny")


def train_run(run_dir, config: RunConfig, control: RunControl | None = None,
              resume: str | None = None, on_event=None):
    """(status, events) of a run in this process; ``on_event`` sees each event as it comes."""
    events = []

    def emit(event):
        events.append(event)
        if on_event:
            on_event(event)

    return run(config, run_dir, emit, control or RunControl(), resume=resume), events
