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
)
from engine.errors import ConfigError


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_every_preset_loads(name):
    config = load_config(name)
    assert config.name == name
    assert config.model.d_model % config.model.n_head == 0


def test_full_preset_has_the_paper_values():
    c = load_config("full")
    assert (c.tokenizer.vocab_size, c.tokenizer.shared, c.tokenizer.kind) == (37000, True, "bpe")
    assert (c.model.d_model, c.model.ffn_hidden, c.model.n_head, c.model.n_layers) == (512, 2048, 8, 6)
    assert c.model.dropout == 0.1 and c.training.label_smoothing == 0.1
    assert c.training.warmup == 4000 and c.training.max_tokens == 25000
    assert c.training.checkpoint_every == 10
    assert (c.eval.beam, c.eval.length_penalty) == (4, 0.6)
    assert c.data.source == "wmt14" and c.data.train_size == 0


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
