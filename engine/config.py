"""Run configuration: presets (TOML), ``section.key=value`` overrides, validation, one frozen config.

Every key is declared once below with its type, default and what it accepts. A bad value never
gets past ``load_config``: the error is one line naming the file, the key, the value and what
would be accepted.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from engine.errors import ConfigError


def _presets_dir() -> Path:
    """presets/ at the top of a source checkout; inside an installed wheel (which has no source
    tree) setup.py maps it to engine/presets/, and wheels install unpacked: a real directory."""
    installed = Path(__file__).parent / "presets"
    return installed if installed.is_dir() else Path(__file__).parent.parent / "presets"


PRESETS_DIR = _presets_dir()
PRESET_NAMES = ("sample", "tiny", "small", "quick", "medium", "full", "big")


def _key(default: Any, *, doc: str, min: float | None = None, max: float | None = None,
         choices: tuple[str, ...] | None = None, is_file: bool = False,
         auto: bool = False, kind: type | None = None) -> Any:
    """``auto``: the key also takes the string "auto" (the engine works the value out);
    ``kind``: the value's type when the default is "auto"."""
    meta = {"doc": doc, "min": min, "max": max, "choices": choices, "is_file": is_file,
            "auto": auto, "kind": kind}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DataConfig:
    source: str = _key("sample", doc="where pairs come from", choices=("sample", "wmt14", "local"))
    train_size: int = _key(0, doc="training pairs to use, 0 = all", min=0)
    valid_size: int = _key(0, doc="validation pairs to use, 0 = all", min=0)
    test_size: int = _key(0, doc="test pairs to use, 0 = all", min=0)
    src_lang: str = _key("en", doc="source language code")
    tgt_lang: str = _key("de", doc="target language code")
    train_src: str = _key("", doc="local source: training source file", is_file=True)
    train_tgt: str = _key("", doc="local source: training target file", is_file=True)
    valid_src: str = _key("", doc="local source: validation source file", is_file=True)
    valid_tgt: str = _key("", doc="local source: validation target file", is_file=True)
    test_src: str = _key("", doc="local source: test source file (optional)", is_file=True)
    test_tgt: str = _key("", doc="local source: test target file (optional)", is_file=True)
    seed: int = _key(1234, doc="sample source: generator seed", min=0)


@dataclass(frozen=True)
class TokenizerConfig:
    kind: str = _key("bpe", doc="subword model", choices=("bpe", "wordpiece"))
    vocab_size: int = _key(8000, doc="target vocabulary size, specials included; at least the "
                           "training text's alphabet + 4 specials (said once counted)", min=5)
    shared: bool = _key(True, doc="one vocabulary for both languages (the paper)")
    min_frequency: int = _key(2, doc="pairs seen fewer times are never merged", min=0)
    path: str = _key("", doc="use this tokenizer.json instead of training one", is_file=True)


@dataclass(frozen=True)
class ModelConfig:
    d_model: int = _key(512, doc="model width", min=8)
    ffn_hidden: int = _key(2048, doc="feed-forward inner width", min=8)
    n_head: int = _key(8, doc="attention heads (must divide d_model)", min=1)
    n_layers: int = _key(6, doc="encoder and decoder layers each", min=1)
    dropout: float = _key(0.1, doc="dropout probability", min=0.0, max=0.9)
    max_len: int = _key(256, doc="longest sentence in tokens; longer pairs are dropped", min=8)
    pre_norm: bool = _key(False, doc="layer norm before each sublayer (paper: after)")


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = _key(10, doc="passes over the training data (when max_updates = 0)", min=1)
    max_updates: int = _key(0, doc="optimizer updates to train, 0 = train by epochs", min=0)
    max_tokens: int | str = _key(4096, doc="padded source or target tokens per batch, or \"auto\": "
                                 "the largest that fits in memory (transformer-train fit)",
                                 min=16, auto=True)
    update_freq: int = _key(1, doc="batches accumulated per optimizer step", min=1)
    effective_tokens: int = _key(0, doc="tokens per update over all processes; derives "
                                 "update_freq = ceil(this / (processes x max_tokens)), 0 = off",
                                 min=0)
    warmup: int = _key(4000, doc="learning-rate warmup steps", min=1)
    lr_factor: float = _key(1.0, doc="scale of the paper's learning-rate schedule", min=0.0)
    label_smoothing: float = _key(0.1, doc="label smoothing epsilon", min=0.0, max=0.99)
    clip_norm: float = _key(0.0, doc="gradient clipping max norm, 0 = off", min=0.0)
    precision: str = _key("auto", doc="arithmetic", choices=("auto", "fp32", "bf16", "fp16"))
    device: str = _key("auto", doc="where to train", choices=("auto", "cpu", "cuda"))
    attention: str = _key("auto", doc="attention kernels: auto = torch's choice (without "
                          "cuDNN's on sm90+ until gpu_check.py proves it), math = the plain "
                          "one, no-cudnn = all but cuDNN's",
                          choices=("auto", "math", "no-cudnn"))
    compile: Any = _key("auto", doc="the training forward and loss through torch.compile: auto "
                        "= on CUDA (slower than eager on the CPU, bench_train.py)", auto=True,
                        kind=bool)
    checkpoint_every: int = _key(10, doc="epochs between model_epoch_N.pt checkpoints "
                                 "(when checkpoint_every_updates = 0)", min=1)
    checkpoint_every_updates: int = _key(0, doc="updates between checkpoint_update_N.pt "
                                         "checkpoints (instead of epoch ones), 0 = off", min=0)
    save_every_minutes: float = _key(10.0, doc="checkpoint_last.pt also saved mid-epoch this "
                                     "often (training minutes), 0 = at epoch ends only", min=0.0)
    keep_last: int = _key(5, doc="periodic checkpoints kept, 0 = all", min=0)
    average_last: int = _key(5, doc="periodic checkpoints averaged into averaged.pt at the end, "
                             "0 = none", min=0)
    patience: int = _key(0, doc="validations without improving eval.best_by before training "
                         "ends early, 0 = off", min=0)
    seed: int = _key(1, doc="random seed for initialisation and batch order", min=0)
    max_bad_batches: int = _key(5, doc="NaN/OOM batches in a row, or NaN ones among the last 100 "
                                "updates, before the run stops", min=1)
    divergence_factor: float = _key(5.0, doc="a validation loss above this times the best stops "
                                    "the run without saving (diverged)", min=1.0)
    memory_budget: float = _key(0.0, doc="GiB training may use (fit, preflight); 0 = the whole "
                                "GPU, or on the CPU all of RAM (preflight: no check)", min=0.0)


@dataclass(frozen=True)
class EvalConfig:
    beam: int = _key(4, doc="beam size, 1 = greedy", min=1)
    length_penalty: float = _key(0.6, doc="length penalty alpha", min=0.0)
    max_len_offset: int = _key(50, doc="longest output = input length + this", min=1)
    bleu_every: int = _key(1, doc="epochs between validation BLEU, 0 = never", min=0)
    bleu_samples: int = _key(500, doc="validation pairs decoded for BLEU, 0 = all", min=0)
    best_by: str = _key("loss", doc="what chooses checkpoint_best.pt (and what patience "
                        "watches)", choices=("loss", "bleu"))
    print_samples: int = _key(3, doc="validation sentences translated at each validation, "
                              "shown with their reference", min=0)


@dataclass(frozen=True)
class LogConfig:
    tensorboard: bool = _key(False, doc="also write the metrics as TensorBoard scalars in "
                             "<run dir>/tensorboard (needs the tensorboard package)")


@dataclass(frozen=True)
class NotifyConfig:
    command: str = _key("", doc="shell command (sh -c) run for every alert, the alert as JSON "
                        "on stdin and as TT_ALERT_* variables (README: Alerts); \"\" = alerts "
                        "go to events.jsonl only")
    timeout_seconds: float = _key(30.0, doc="the command is killed (its process group) after "
                                  "this long; the alert is then a warning in the log",
                                  min=1.0, max=3600.0)
    stall_minutes: float = _key(30.0, doc="alert when a run that is not paused reports no "
                                "progress for this long, 0 = off", min=0.0)
    oom_skips: int = _key(10, doc="alert when this many batches were skipped for out of "
                          "memory (again at twice as many, ...), 0 = off", min=0)
    target_bleu: float = _key(0.0, doc="alert when the validation BLEU reaches this, 0 = off",
                              min=0.0, max=100.0)
    target_val_loss: float = _key(0.0, doc="alert when the validation loss falls to this, "
                                  "0 = off", min=0.0)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "tokenizer": TokenizerConfig,
    "model": ModelConfig,
    "training": TrainingConfig,
    "eval": EvalConfig,
    "log": LogConfig,
    "notify": NotifyConfig,
}


@dataclass(frozen=True)
class RunConfig:
    name: str  # the preset's name (or file stem); the default run directory is saved/<name>
    source: str  # where the preset came from, for messages
    data: DataConfig = DataConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    eval: EvalConfig = EvalConfig()
    log: LogConfig = LogConfig()
    notify: NotifyConfig = NotifyConfig()

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def to_toml(self) -> str:
        lines = [f"# resolved configuration of run {self.name!r} (from {self.source})",
                 # a run resumed from this file keeps the preset's name (not "config")
                 f"preset = {_toml_value(self.name)}"]
        for section, values in self.to_dict().items():
            lines.append(f"\n[{section}]")
            lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


# --- loading -------------------------------------------------------------------------------


def resolve_preset(preset: str) -> Path:
    """A preset name (sample, quick, ...) or a path to a TOML file."""
    if preset in PRESET_NAMES:
        return PRESETS_DIR / f"{preset}.toml"
    path = Path(preset).expanduser()
    if path.suffix == ".toml" or path.exists() or "/" in preset:
        if not path.is_file():
            raise ConfigError(f"{preset}: preset file not found (give a name among "
                              f"{', '.join(PRESET_NAMES)} or the path of a .toml file)")
        return path
    hint = _did_you_mean(preset, PRESET_NAMES)
    raise ConfigError(f"unknown preset {preset!r}{hint}: use one of {', '.join(PRESET_NAMES)} "
                      "or the path of a .toml file")


def load_config(preset: str = "sample", overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    path = resolve_preset(preset)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read preset: {exc}") from None
    for item in overrides:
        _apply_override(raw, item)
    name = raw.pop("preset", path.stem)  # a run's config.toml names the preset it came from
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{path}: preset = {name!r}: the preset's name, a non-empty string")
    config = config_from_dict(raw, name=name, source=str(path))
    _check_files(config)
    return config


def config_from_dict(raw: dict[str, Any], name: str = "custom", source: str = "<dict>") -> RunConfig:
    sections: dict[str, Any] = {}
    for section, values in raw.items():
        if section not in SECTIONS:
            hint = _did_you_mean(section, SECTIONS)
            raise ConfigError(f"{source}: unknown section [{section}]{hint} "
                              f"(sections: {', '.join(SECTIONS)})")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: {section} must be a table [{section}], not a value")
        sections[section] = _build_section(section, values, source)
    config = RunConfig(name=name, source=source, **sections)
    _check_consistency(config)
    return config


def _build_section(section: str, values: dict[str, Any], source: str) -> Any:
    cls = SECTIONS[section]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    checked = {}
    for key, value in values.items():
        if key not in fields:
            hint = _did_you_mean(key, fields)
            raise ConfigError(f"{source}: unknown key [{section}] {key}{hint} "
                              f"(keys: {', '.join(fields)})")
        checked[key] = _check_value(section, fields[key], value, source)
    return cls(**checked)


def _check_value(section: str, f: dataclasses.Field, value: Any, source: str) -> Any:
    where = f"{source}: [{section}] {f.name} = {value!r}"
    meta = f.metadata
    kind = meta.get("kind") or type(f.default)
    auto = ' or "auto"' if meta.get("auto") else ""
    if auto and value == "auto":
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: must be true or false{auto}")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: must be an integer{_range_text(meta)}{auto}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: must be a number{_range_text(meta)}")
        value = float(value)
    elif kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: must be a string")
    if meta["choices"] and value not in meta["choices"]:
        hint = _did_you_mean(str(value), meta["choices"])
        raise ConfigError(f"{where}: must be one of {', '.join(meta['choices'])}{hint}")
    if meta["min"] is not None and value < meta["min"]:
        raise ConfigError(f"{where}: must be{_range_text(meta)}{auto}")
    if meta["max"] is not None and value > meta["max"]:
        raise ConfigError(f"{where}: must be{_range_text(meta)}{auto}")
    return value


def _range_text(meta: Any) -> str:
    lo, hi = meta["min"], meta["max"]
    if lo is not None and hi is not None:
        return f" between {lo} and {hi}"
    if lo is not None:
        return f" >= {lo}"
    return ""


def _apply_override(raw: dict[str, Any], item: str) -> None:
    """``section.key=value``; the value is parsed as a TOML value, else taken as a string."""
    target, sep, text = item.partition("=")
    section, dot, key = target.strip().partition(".")
    if not sep or not dot or not section or not key:
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. training.epochs=3")
    if section not in SECTIONS:
        hint = _did_you_mean(section, SECTIONS)
        raise ConfigError(f"--set {item!r}: unknown section {section!r}{hint} "
                          f"(sections: {', '.join(SECTIONS)})")
    text = text.strip()
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare word or a path
    raw.setdefault(section, {})
    if not isinstance(raw[section], dict):
        raise ConfigError(f"--set {item!r}: [{section}] in the preset is not a table")
    # checked here, so that a bad value blames the --set that gave it, not the preset file
    fields = {f.name: f for f in dataclasses.fields(SECTIONS[section])}
    if key not in fields:
        hint = _did_you_mean(key, fields)
        raise ConfigError(f"--set {item}: unknown key [{section}] {key}{hint} "
                          f"(keys: {', '.join(fields)})")
    raw[section][key] = _check_value(section, fields[key], value, f"--set {item}")


def _check_consistency(config: RunConfig) -> None:
    m, d = config.model, config.data
    where = config.source
    if m.d_model % m.n_head:
        raise ConfigError(f"{where}: [model] n_head = {m.n_head} must divide d_model = {m.d_model}")
    if m.d_model % 2:
        raise ConfigError(f"{where}: [model] d_model = {m.d_model} must be even "
                          "(sinusoidal positions)")
    if d.src_lang == d.tgt_lang:
        raise ConfigError(f"{where}: [data] src_lang and tgt_lang are both {d.src_lang!r}")
    if d.source == "local":
        for key in ("train_src", "train_tgt", "valid_src", "valid_tgt"):
            if not getattr(d, key):
                raise ConfigError(f"{where}: [data] {key} is required when source = \"local\"")
        if bool(d.test_src) != bool(d.test_tgt):
            raise ConfigError(f"{where}: [data] test_src and test_tgt must be given together")
    if d.source == "wmt14" and {d.src_lang, d.tgt_lang} != {"en", "de"}:
        raise ConfigError(f"{where}: [data] source = \"wmt14\" has en and de only, "
                          f"not {d.src_lang}-{d.tgt_lang}")


def with_effective_batch(config: RunConfig, processes: int) -> tuple[RunConfig, str]:
    """``training.effective_tokens`` turned into ``update_freq`` for this many processes:
    (the config to run, a line saying so, "" when effective_tokens is off).

    Effective batch = processes x update_freq x max_tokens; the paper's 25,000 tokens per update
    stay 25,000 on one GPU or eight."""
    t = config.training
    if not t.effective_tokens or t.max_tokens == "auto":  # "auto": once the fit has measured
        return config, ""
    update_freq = max(1, math.ceil(t.effective_tokens / (processes * t.max_tokens)))
    training = dataclasses.replace(t, update_freq=update_freq)
    line = (f"training.effective_tokens = {t.effective_tokens:,}: update_freq = {update_freq} "
            f"({processes} process{'es' if processes > 1 else ''} x {update_freq} batch"
            f"{'es' if update_freq > 1 else ''} x {t.max_tokens:,} max_tokens = "
            f"{processes * update_freq * t.max_tokens:,} tokens per update)")
    return dataclasses.replace(config, training=training), line


def _check_files(config: RunConfig) -> None:
    """Files named in the config must exist (relative paths are from the current directory)."""
    for section in SECTIONS:
        values = getattr(config, section)
        for f in dataclasses.fields(values):
            value = getattr(values, f.name)
            if f.metadata.get("is_file") and value and not Path(value).expanduser().is_file():
                raise ConfigError(f"{config.source}: [{section}] {f.name} = {value!r}: "
                                  "file not found")


def _did_you_mean(word: str, options: Any) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def describe_keys() -> str:
    """Every section and key with its default and meaning, for ``--help`` and the README."""
    lines = []
    for section, cls in SECTIONS.items():
        lines.append(f"[{section}]")
        for f in dataclasses.fields(cls):
            lines.append(f"  {f.name} = {_toml_value(f.default)}  # {f.metadata['doc']}")
    return "\n".join(lines)
