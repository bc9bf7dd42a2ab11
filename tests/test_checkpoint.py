"""Checkpoints: self-contained, safe to load, refused when they do not fit, never half-written."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from engine import checkpoint as ckpt
from engine.config import config_from_dict
from engine.errors import EngineError
from engine.tokenizer.stage import TokenizerSet
from engine.train import run_model_stage

SENTENCES = [("a small dog runs", "ein kleiner hund rennt"), ("the red car", "das rote auto"),
             ("a cat sleeps in the house", "eine katze schlaeft im haus")] * 20


def tokenizer_set(pairs, vocab_size=80):
    """A real BPE tokenizer trained on the pairs, shared by both languages."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator([s for p in pairs for s in p], trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<unk>", "<s>", "</s>"],
        show_progress=False))
    return TokenizerSet(src=tok, tgt=tok, shared=True, files=[])


def model_config(**model):
    return config_from_dict({"model": {"d_model": 16, "ffn_hidden": 32, "n_head": 2,
                                       "n_layers": 1, "max_len": 16, **model},
                             "training": {"precision": "fp32"}})


def build_model(tmp_path, tokenizers, config):
    return run_model_stage(config, tokenizers, tmp_path, emit=lambda e: None).output


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizers():
    return tokenizer_set(SENTENCES)


def test_a_checkpoint_is_plain_data_and_rebuilds_the_model_for_translation(tmp_path, tokenizers):
    config = model_config()
    state = build_model(tmp_path, tokenizers, config)
    path = tmp_path / ckpt.LAST
    size = ckpt.save_checkpoint(ckpt.checkpoint_state(state, config, tokenizers), path)
    assert size == path.stat().st_size > 0

    raw = torch.load(path, weights_only=True)  # no pickled objects inside
    assert raw["vocab"] == {"src_size": tokenizers.src.get_vocab_size(),
                            "tgt_size": tokenizers.tgt.get_vocab_size(), "shared": True}
    assert raw["config"]["model"]["d_model"] == 16 and raw["epoch"] == 0 and raw["step"] == 0
    # what trained it, as plain strings: this torch and this machine's device
    assert raw["versions"]["torch"] == torch.__version__ and raw["versions"]["device"]
    assert all(type(v) is str for v in raw["versions"].values())
    averaged = ckpt.average_checkpoints([path, path])
    assert averaged["versions"] == raw["versions"]

    model, src_tok, tgt_tok, config = ckpt.build_for_inference(path)
    assert config.model == model_config().model
    assert src_tok.encode("a small dog").ids == tokenizers.src.encode("a small dog").ids
    src = torch.tensor([src_tok.encode("the red car").ids + [3]])
    tgt = torch.tensor([[2] + tgt_tok.encode("das rote").ids])
    state.model.eval()
    with torch.no_grad():
        assert torch.equal(model(src, tgt), state.model(src, tgt))


def test_a_checkpoint_for_another_model_is_refused_in_one_line(tmp_path, tokenizers):
    config = model_config(d_model=32)
    path = tmp_path / "wide.pt"
    ckpt.save_checkpoint(ckpt.checkpoint_state(build_model(tmp_path, tokenizers, config), config,
                                               tokenizers), path)
    state = ckpt.load_checkpoint(path)

    narrow = model_config().model
    vocab = tokenizers.src.get_vocab_size()
    with pytest.raises(EngineError, match=r"model\.d_model = 32, this run has 16") as err:
        ckpt.check_fits(state, path, narrow, vocab, vocab, True)
    assert "\n" not in str(err.value)
    with pytest.raises(EngineError, match=r"vocabulary src_size") as err:
        ckpt.check_fits(state, path, state_model_config(state), vocab + 5, vocab + 5, True)
    assert "\n" not in str(err.value)

    # weights loaded straight into a narrower model: a one-line error, not a shape traceback
    from engine.model import Transformer

    other = Transformer.from_config(narrow, vocab, vocab, share_embeddings=True)
    with pytest.raises(EngineError, match="do not fit") as err:
        ckpt.load_model_state(other, state, path)
    assert "\n" not in str(err.value)


def state_model_config(state):
    return config_from_dict({"model": state["config"]["model"]}).model


def test_a_file_that_is_not_a_checkpoint_is_refused_in_one_line(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(EngineError, match="not a transformer-tui checkpoint or damaged"):
        ckpt.load_checkpoint(garbage)
    noise = tmp_path / "noise.pt"
    noise.write_bytes(random.Random(7).randbytes(5000))
    with pytest.raises(EngineError) as err:
        ckpt.load_checkpoint(noise)
    assert str(err.value) == (f"{noise}: not a transformer-tui checkpoint or damaged "
                              "(not a PyTorch zip file)")
    with pytest.raises(EngineError, match="checkpoint not found"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(EngineError, match="not a transformer-tui checkpoint"):
        ckpt.load_checkpoint(tmp_path / "foreign.pt")


def test_random_states_round_trip_through_a_checkpoint(tmp_path):
    torch.manual_seed(5), random.seed(5), np.random.seed(5)
    ckpt.save_checkpoint({"rng": ckpt.rng_state()}, tmp_path / "rng.pt")
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    ckpt.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]


def test_only_the_newest_periodic_checkpoints_this_run_wrote_are_kept(tmp_path):
    for epoch in (2, 4, 6, 8, 10):
        ckpt.save_checkpoint({"epoch": epoch}, tmp_path / ckpt.periodic_name(epoch))
    ckpt.save_checkpoint({"epoch": 10}, tmp_path / ckpt.LAST)
    ckpt.save_checkpoint({"epoch": 12}, tmp_path / ckpt.periodic_name(12))  # another run's
    written = [ckpt.periodic_name(epoch) for epoch in (2, 4, 6, 8, 10)]
    removed = ckpt.prune_periodic(tmp_path, keep_last=3, written=written)
    assert sorted(p.name for p in removed) == ["model_epoch_2.pt", "model_epoch_4.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint_last.pt", "model_epoch_10.pt", "model_epoch_12.pt", "model_epoch_6.pt",
        "model_epoch_8.pt"]
    assert ckpt.prune_periodic(tmp_path, keep_last=0, written=written) == []  # 0 keeps all


# --- kill -9 during a write -------------------------------------------------------------------


def save_forever(run_dir: Path, weights: torch.Tensor, writing) -> None:
    """Child process: write checkpoint_last.pt, link it as a periodic one, prune, forever."""
    step = 0
    writing.set()
    while True:
        step += 1
        state = {"model": {"w": weights}, "config": {}, "vocab": {}, "tokenizers": {},
                 "step": step}
        ckpt.save_checkpoint(state, run_dir / ckpt.LAST)
        ckpt.copy_checkpoint(run_dir / ckpt.LAST, run_dir / ckpt.periodic_name(step))
        ckpt.prune_periodic(run_dir, keep_last=2,
                            written=[ckpt.periodic_name(n) for n in range(1, step + 1)])


def test_kill_9_during_checkpoint_writes_never_leaves_a_checkpoint_that_fails_to_load(tmp_path):
    # fork: a child starts in milliseconds; it only writes tensors the parent made
    processes = multiprocessing.get_context("fork")
    weights = torch.zeros(1_000_000)  # 4 MB: a write takes long enough to be hit
    rng = random.Random(0)
    kills, temporaries_seen = 30, 0
    for attempt in range(kills):
        weights.fill_(attempt)
        writing = processes.Event()
        child = processes.Process(target=save_forever, args=(tmp_path, weights, writing))
        child.start()
        assert writing.wait(timeout=60), "the child did not start"
        time.sleep(rng.uniform(0.0, 0.1))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        assert child.exitcode == -signal.SIGKILL
        temporaries_seen += bool(list(tmp_path.glob(f"{ckpt.TEMP_PREFIX}*")))
        for path in tmp_path.glob("*.pt"):
            state = ckpt.load_checkpoint(path)  # raises if half-written
            assert state["step"] >= 1 and state["model"]["w"].shape == (1_000_000,)
            assert state["model"]["w"].eq(state["model"]["w"][0]).all()  # one child's whole write
    # the kills did land in the middle of writes, and the leftovers are cleaned up
    print("temporaries seen", temporaries_seen, "of", kills)
    assert temporaries_seen > 0
    ckpt.remove_stale_temporaries(tmp_path)
    assert not list(tmp_path.glob(f"{ckpt.TEMP_PREFIX}*"))
