"""Presets load and validate; every kind of bad input is one line naming what was wrong."""

from pathlib import Path

import pytest

from engine.config import (
    PRESET_NAMES,
    RunConfig,
    config_from_dict,
    describe_keys,
    load_config,
    resolve_preset,
    with_effective_batch,
)
from engine.errors import ConfigError


def local_files(write_text) -> list[str]:
    """--set overrides naming six small aligned files, as a user of the small preset gives."""
    overrides = []
    for split in ("train", "valid", "test"):
        for side, lang in (("src", "en"), ("tgt", "de")):
            path = write_text(f"{split}.{lang}", [f"{split} {lang} {i}" for i in range(3)])
            overrides.append(f"data.{split}_{side}={path}")
    return overrides


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_every_preset_loads(name, write_text):
    config = load_config(name, local_files(write_text) if name in ("tiny", "small") else ())
    assert config.name == name
    assert config.model.d_model % config.model.n_head == 0


def test_full_preset_has_the_paper_values():
    c = load_config("full")
    assert (c.tokenizer.vocab_size, c.tokenizer.shared, c.tokenizer.kind) == (37000, True, "bpe")
    assert (c.model.d_model, c.model.ffn_hidden, c.model.n_head, c.model.n_layers) == (512, 2048, 8, 6)
    assert c.model.dropout == 0.1 and c.training.label_smoothing == 0.1
    assert c.training.warmup == 4000
    assert (c.training.checkpoint_every_updates, c.training.average_last) == (1500, 5)
    assert (c.eval.beam, c.eval.length_penalty) == (4, 0.6)
    assert c.data.source == "wmt14" and c.data.train_size == 0


@pytest.mark.parametrize("processes", [1, 2, 8])
def test_full_is_100k_updates_of_25k_tokens_on_any_number_of_processes(processes):
    config, line = with_effective_batch(load_config("full"), processes)
    t = config.training
    assert t.max_updates == 100_000
    assert processes * t.update_freq * t.max_tokens == 25_000
    assert f"update_freq = {t.update_freq}" in line and "25,000 tokens per update" in line


def test_effective_tokens_rounds_the_batch_up_and_is_off_at_zero():
    config = load_config("sample", ["training.effective_tokens=5000", "training.max_tokens=2048"])
    derived, line = with_effective_batch(config, 1)
    assert derived.training.update_freq == 3  # ceil(5000 / 2048): never fewer tokens than asked
    assert "6,144 tokens per update" in line
    assert "update_freq = 3" in derived.to_toml()  # what config.toml of the run records
    plain = load_config("sample", ["training.update_freq=2"])
    assert with_effective_batch(plain, 4) == (plain, "")


def test_big_is_table_3_big_with_the_same_batch():
    c = load_config("big")
    assert (c.model.d_model, c.model.ffn_hidden, c.model.n_head, c.model.dropout) == (1024, 4096, 16, 0.3)
    assert c.training.max_updates == 300_000 and c.training.effective_tokens == 25_000
    assert c.training.average_last == 20 and c.training.keep_last >= 20


def test_small_is_the_multi30k_recipe_and_needs_the_users_files(write_text):
    with pytest.raises(ConfigError, match=r"\[data\] train_src is required when source = \"local\""):
        load_config("small")
    c = load_config("small", local_files(write_text))
    assert (c.model.d_model, c.model.ffn_hidden, c.model.n_head, c.model.n_layers) == (256, 1024, 4, 3)
    assert c.model.dropout == 0.2 and c.tokenizer.vocab_size == 8000 and c.tokenizer.shared
    assert (c.training.max_tokens, c.training.warmup) == (2048, 1000)
    assert c.training.max_updates > 0 and c.training.average_last == 5


def test_tiny_is_the_multi30k_recipe_for_a_45_cpu_minute_budget(write_text):
    with pytest.raises(ConfigError, match=r"\[data\] train_src is required when source = \"local\""):
        load_config("tiny")
    c = load_config("tiny", local_files(write_text))
    assert (c.model.d_model, c.model.ffn_hidden, c.model.n_head, c.model.n_layers) == (192, 768, 4, 3)
    assert c.tokenizer.vocab_size == 8000 and c.tokenizer.shared
    assert (c.training.max_tokens, c.training.max_updates) == (2048, 2600)
    assert (c.training.checkpoint_every_updates, c.training.average_last) == (130, 8)
    assert (c.eval.beam, c.eval.bleu_every) == (5, 0)


def test_quick_and_medium_sizes():
    quick, medium = load_config("quick"), load_config("medium")
    assert (quick.data.train_size, quick.tokenizer.vocab_size, quick.training.epochs) == (10000, 5000, 3)
    assert (medium.data.train_size, medium.tokenizer.vocab_size, medium.training.epochs) == (100000, 10000, 10)


def test_overrides_are_typed_by_the_key():
    c = load_config("sample", ["training.epochs=3", "model.dropout=0", "tokenizer.shared=false",
                               "training.precision=fp32", "tokenizer.kind=wordpiece"])
    assert c.training.epochs == 3 and isinstance(c.training.epochs, int)
    assert c.model.dropout == 0.0 and isinstance(c.model.dropout, float)
    assert c.tokenizer.shared is False
    assert c.training.precision == "fp32" and c.tokenizer.kind == "wordpiece"


def test_config_round_trips_through_toml(tmp_path):
    config = load_config("sample", ["training.epochs=2", 'data.src_lang="de"', "data.tgt_lang=en"])
    path = tmp_path / "resolved.toml"
    path.write_text(config.to_toml())
    again = load_config(str(path))
    assert again.to_dict() == config.to_dict()


def test_preset_given_by_path(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text("[training]\nepochs = 2\n")
    config = load_config(str(path))
    assert config.name == "mine" and config.training.epochs == 2
    assert config.model == RunConfig(name="x", source="y").model  # defaults elsewhere


def test_describe_keys_lists_every_section():
    text = describe_keys()
    for section in ("[data]", "[tokenizer]", "[model]", "[training]", "[eval]"):
        assert section in text
    assert "max_tokens" in text and "bleu_every" in text


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return str(path)


BAD_PRESETS = [
    # (preset text, overrides, words the one-line error must contain)
    ("[training\nepochs = 3", [], ["bad.toml", "not valid TOML"]),
    ("[trainng]\nepochs = 3", [], ["bad.toml", "[trainng]", "did you mean 'training'"]),
    ("[training]\nepochz = 3", [], ["bad.toml", "epochz", "did you mean 'epochs'"]),
    ('[training]\nepochs = "three"', [], ["[training] epochs", "'three'", "must be an integer"]),
    ("[training]\nmax_tokens = -5", [], ["max_tokens", "-5", ">= 16"]),
    ("[data]\ntrain_size = -1", [], ["train_size", "-1", ">= 0"]),
    ("[model]\ndropout = 1.5", [], ["dropout", "1.5", "between 0.0 and 0.9"]),
    ("[model]\nd_model = 100\nn_head = 8", [], ["n_head = 8", "must divide d_model = 100"]),
    ('[training]\nprecision = "fp8"', [], ["precision", "'fp8'", "auto, fp32, bf16, fp16"]),
    ('[tokenizer]\nkind = "bpee"', [], ["kind", "bpe, wordpiece", "did you mean 'bpe'"]),
    ('[tokenizer]\nshared = "yes"', [], ["shared", "true or false"]),
    ("[training]\nepochs = 1.5", [], ["epochs", "1.5", "integer"]),
    ("[training]\nepochs = true", [], ["epochs", "True", "integer"]),
    ('[data]\nsource = "local"', [], ["train_src is required", "local"]),
    ('[data]\nsource = "local"\ntrain_src = "/nonexistent/train.en"\ntrain_tgt = "x"\n'
     'valid_src = "x"\nvalid_tgt = "x"', [],
     ["train_src", "/nonexistent/train.en", "file not found"]),
    ('[tokenizer]\npath = "/nonexistent/tokenizer.json"', [], ["tokenizer] path", "file not found"]),
    ('[data]\nsrc_lang = "en"\ntgt_lang = "en"', [], ["src_lang and tgt_lang", "'en'"]),
    ('[data]\nsource = "wmt14"\nsrc_lang = "fr"', [], ["wmt14", "en and de only"]),
    ("training = 3", [], ["training must be a table"]),
    ("", ["training.epochs"], ["--set 'training.epochs'", "section.key=value"]),
    ("", ["trainig.epochs=3"], ["unknown section 'trainig'", "did you mean 'training'"]),
    ("", ["training.epochs=0"], ["epochs", "0", ">= 1"]),
    ("", ["model.n_layers=two"], ["n_layers", "'two'", "integer"]),
]


@pytest.mark.parametrize("text,overrides,words", BAD_PRESETS)
def test_bad_input_is_one_line_naming_what_was_wrong(tmp_path, text, overrides, words):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), overrides)
    message = str(info.value)
    assert "\n" not in message.strip(), message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_unknown_preset_name_suggests_the_closest():
    with pytest.raises(ConfigError, match="unknown preset 'quik'.*did you mean 'quick'"):
        resolve_preset("quik")


def test_missing_preset_file():
    with pytest.raises(ConfigError, match="nowhere.toml: preset file not found"):
        load_config("nowhere.toml")


def test_undecodable_preset(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"# caf\xe9\n[training]\nepochs = 2\n")
    with pytest.raises(ConfigError, match="latin1.toml: cannot read preset"):
        load_config(str(path))


def test_config_is_frozen():
    config = config_from_dict({})
    with pytest.raises(Exception):
        config.training.epochs = 3  # type: ignore[misc]


def test_a_runs_config_toml_keeps_the_presets_name(tmp_path):
    """A resume loads the run's config.toml: the run is still "sample" (the app's header said
    "config -> saved/sample" after a resume)."""
    written = tmp_path / "config.toml"
    written.write_text(load_config("sample").to_toml())
    again = load_config(str(written))
    assert again.name == "sample" and again.source == str(written)
    assert again.to_dict() == load_config("sample").to_dict()
    written.write_text('preset = 3\n')
    with pytest.raises(ConfigError, match="preset = 3"):
        load_config(str(written))
