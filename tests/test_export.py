"""Export: a model trained here, loaded by Hugging Face transformers and by CTranslate2 with no
code of ours, translates as our own search does.

The models are real tiny runs (tests/tiny_runs.py) trained in seconds; transformers and
CTranslate2 are the real packages (the `export` extra). Greedy search must give exactly our
output; beam search differs only through the length penalty's formula (see engine/export/hf.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_runs import tiny_config
from tokenizers import Tokenizer

from engine import checkpoint as ckpt
from engine.control import RunControl
from engine.decode import translate
from engine.export.source import EOS_ID  # the one place export reads engine facts from
from engine.pipeline import run

transformers = pytest.importorskip("transformers", reason="the export extra is not installed "
                                   "(pip install -e '.[export]')")

SENTENCES = ["The young man sees the old dog.", "A woman reads a book in the garden.",
             "The children were playing.", "Does the teacher know the small girl?",
             "My brother buys a new car, because the old car is broken.", "Yes."]
OFFSET = 50  # eval.max_len_offset of the tiny runs


def train(run_dir: Path, **changes) -> Path:
    torch.set_num_threads(1)
    # 12 epochs: with fewer the tiny model answers every sentence with one word, and the two
    # length penalties (ours GNMT, transformers |Y|^alpha) then pick different beams
    config = tiny_config(**{"training__epochs": 12, "training__keep_last": 0, **changes})
    assert run(config, run_dir, lambda event: None, RunControl()) == "finished"
    return run_dir


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("run"))


def command(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "engine", *args], env=env, capture_output=True,
                          text=True, timeout=300)


def export(checkpoint: Path, to: str, out: Path, *extra: str) -> Path:
    result = command("export", "--checkpoint", str(checkpoint), "--to", to, str(out), *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def ours(checkpoint: Path, sentences: list[str], beam: int, alpha: float = 0.6) -> list[str]:
    model, src_tok, tgt_tok, _ = ckpt.build_for_inference(checkpoint)
    return translate(model, src_tok, tgt_tok, sentences, beam=beam, length_penalty=alpha,
                     max_len_offset=OFFSET)


def hf_translate(directory: Path, sentences: list[str], beam: int, target_tokenizer=None):
    """What a transformers user writes, plus our per-sentence output limit (source ids + 50):
    generate's limit is per batch, so greedy outputs are cut at each sentence's own limit,
    which for greedy search is the same as stopping there."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForSeq2SeqLM.from_pretrained(directory).eval()
    batch = tokenizer(sentences, return_tensors="pt", padding=True, truncation=True)
    limits = batch["attention_mask"].sum(dim=1) + OFFSET
    with torch.inference_mode():
        generated = model.generate(**batch, num_beams=beam, max_new_tokens=int(limits.max()))
    cut = []
    for row, limit in zip(generated[:, 1:].tolist(), limits.tolist()):  # drop the start token
        row = row[:limit]
        cut.append(row[: row.index(EOS_ID)] if EOS_ID in row else row)
    decoder = target_tokenizer or tokenizer
    return decoder.batch_decode(cut, skip_special_tokens=True), cut


def test_transformers_loads_the_export_and_greedy_search_gives_exactly_our_translations(
        trained_run, tmp_path, one_thread):
    checkpoint = trained_run / ckpt.BEST
    out = export(checkpoint, "hf", tmp_path / "hf")
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "README.md"} <= {p.name for p in out.iterdir()}

    texts, ids = hf_translate(out, SENTENCES, beam=1)
    assert texts == ours(checkpoint, SENTENCES, beam=1)
    model, src_tok, tgt_tok, _ = ckpt.build_for_inference(checkpoint)
    from engine.decode import greedy_search  # the ids, not only the text, are the same

    for sentence, hf_ids in zip(SENTENCES, ids):
        src = torch.tensor([src_tok.encode(sentence, add_special_tokens=False).ids + [EOS_ID]])
        assert greedy_search(model, src, 2, EOS_ID, 0, OFFSET)[0] == hf_ids

    # the tokenizer: our encode + </s>, our decode
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    for sentence in SENTENCES:
        expected = src_tok.encode(sentence, add_special_tokens=False).ids + [EOS_ID]
        assert tokenizer(sentence)["input_ids"] == expected
        assert tokenizer.decode(expected, skip_special_tokens=True) == tgt_tok.decode(expected)

    # the same function: teacher-forced log-probabilities agree to float rounding
    hf_model = transformers.AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    batch = tokenizer(SENTENCES, return_tensors="pt", padding=True)
    target = tokenizer(["Der junge Mann sieht den alten Hund.", "Ja."], return_tensors="pt",
                       padding=True)["input_ids"]
    decoder_in = torch.cat([torch.full((2, 1), 2), target[:, :-1]], dim=1)
    with torch.inference_mode():
        hf_logits = hf_model(input_ids=batch["input_ids"][:2],
                             attention_mask=batch["attention_mask"][:2],
                             decoder_input_ids=decoder_in).logits
        our_logits = model(batch["input_ids"][:2], decoder_in)
    assert torch.allclose(hf_logits.log_softmax(-1), our_logits.log_softmax(-1), atol=1e-4)


def test_beam_search_in_transformers_matches_ours_up_to_the_length_penalty_formula(
        trained_run, tmp_path, one_thread):
    checkpoint = trained_run / ckpt.BEST
    out = export(checkpoint, "hf", tmp_path / "hf")
    generation = transformers.GenerationConfig.from_pretrained(out)
    assert (generation.num_beams, generation.length_penalty, generation.early_stopping) == (
        4, 0.6, True)
    texts, _ = hf_translate(out, SENTENCES, beam=4)
    expected = ours(checkpoint, SENTENCES, beam=4)
    same = sum(a == b for a, b in zip(texts, expected))
    assert same >= len(SENTENCES) - 1, list(zip(texts, expected))
    # with no length penalty on either side the scoring is the same: every sentence agrees
    # (ours: ((5+|Y|)/6)**0 = 1; transformers: |Y|**0 = 1)
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    batch = tokenizer(SENTENCES, return_tensors="pt", padding=True)
    with torch.inference_mode():
        generated = model.generate(**batch, num_beams=4, length_penalty=0.0, max_new_tokens=40)
    plain = tokenizer.batch_decode(generated, skip_special_tokens=True)
    assert plain == ours(checkpoint, SENTENCES, beam=4, alpha=0.0)


def test_the_model_card_names_the_training_config_and_the_test_bleu(trained_run, tmp_path):
    from engine.data.sample import sample_corpus

    pairs = sample_corpus(400, 40, 10, seed=1234).test
    src, ref = tmp_path / "test.en", tmp_path / "test.de"
    src.write_text("".join(s + "\n" for s, _ in pairs))
    ref.write_text("".join(t + "\n" for _, t in pairs))
    out = export(trained_run / ckpt.BEST, "hf", tmp_path / "hf", "--test-src", str(src),
                 "--test-ref", str(ref))
    card = (out / "README.md").read_text()
    assert "pipeline_tag: translation" in card and "d_model = 32" in card
    assert "Test BLEU on 10 sentences, beam 4, alpha 0.6" in card and "nrefs:1" in card


def test_an_averaged_checkpoint_exports_and_translates_as_ours(trained_run, tmp_path, one_thread):
    averaged = tmp_path / "averaged.pt"
    result = command("average", "--out", str(averaged), "--last", "3", str(trained_run))
    assert result.returncode == 0, result.stderr
    assert len(ckpt.load_checkpoint(averaged)["averaged_from"]) == 3
    out = export(averaged, "hf", tmp_path / "hf")
    assert hf_translate(out, SENTENCES, beam=1)[0] == ours(averaged, SENTENCES, beam=1)
    assert "Weights averaged over 3 checkpoints" in (out / "README.md").read_text()


def test_a_checkpoint_of_a_torchrun_job_exports_and_translates_as_ours(tmp_path, one_thread):
    from test_distributed import job_env, torchrun

    job = tmp_path / "job"
    done = subprocess.run(torchrun(job, "training.epochs=1"), capture_output=True, text=True,
                          env=job_env(), timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    checkpoint = job / ckpt.LAST
    assert ckpt.load_checkpoint(checkpoint)["world_size"] == 2
    out = export(checkpoint, "hf", tmp_path / "hf")
    assert hf_translate(out, SENTENCES, beam=1)[0] == ours(checkpoint, SENTENCES, beam=1)


def test_separate_vocabularies_export_a_target_tokenizer_beside_the_source_one(tmp_path,
                                                                                 one_thread):
    run_dir = train(tmp_path / "run", tokenizer__shared=False, training__epochs=2)
    checkpoint = run_dir / ckpt.BEST
    out = export(checkpoint, "hf", tmp_path / "hf")
    target = transformers.AutoTokenizer.from_pretrained(out, subfolder="target_tokenizer")
    config = transformers.AutoConfig.from_pretrained(out)
    assert not config.share_encoder_decoder_embeddings
    texts, _ = hf_translate(out, SENTENCES, beam=1, target_tokenizer=target)
    assert texts == ours(checkpoint, SENTENCES, beam=1)


def test_export_refuses_bad_requests_in_one_line_and_writes_nothing(trained_run, tmp_path):
    checkpoint = str(trained_run / ckpt.BEST)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep me")
    for args, says in [
            (["--checkpoint", checkpoint, "--to", "hf", str(taken)], "already exists"),
            (["--checkpoint", checkpoint, "--to", "onnx", str(tmp_path / "x")], "must be one of"),
            (["--checkpoint", str(tmp_path / "none.pt"), "--to", "hf", str(tmp_path / "y")],
             "checkpoint not found"),
            (["--checkpoint", checkpoint, "--to", "ct2", str(tmp_path / "z"), "--quantization",
              "int3"], "int3")]:
        result = command("export", *args)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and says in result.stderr
    assert [p.name for p in taken.iterdir()] == ["mine.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def pre_norm_checkpoint(trained_run: Path, path: Path) -> Path:
    """A random pre-norm model saved as our checkpoint, with the trained run's tokenizer."""
    from engine.model import Transformer

    state = ckpt.load_checkpoint(trained_run / ckpt.BEST)
    state["config"]["model"]["pre_norm"] = True
    cfg = state["config"]["model"]
    torch.manual_seed(0)
    model = Transformer(state["vocab"]["src_size"], state["vocab"]["tgt_size"], cfg["d_model"],
                        cfg["ffn_hidden"], cfg["n_head"], cfg["n_layers"], max_len=cfg["max_len"],
                        share_embeddings=state["vocab"]["shared"], pre_norm=True)
    state["model"] = model.state_dict()
    ckpt.save_checkpoint(state, path)
    return path


def test_a_pre_norm_model_is_refused_by_marian_but_exports_to_ctranslate2(trained_run, tmp_path):
    checkpoint = pre_norm_checkpoint(trained_run, tmp_path / "pre_norm.pt")
    result = command("export", "--checkpoint", str(checkpoint), "--to", "hf",
                     str(tmp_path / "hf"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "pre_norm = true cannot be a MarianMTModel" in result.stderr
    assert not (tmp_path / "hf").exists()
    ctranslate2 = pytest.importorskip("ctranslate2", reason="the export extra is not installed")
    out = export(checkpoint, "ct2", tmp_path / "ct2")
    assert ct2_translate(ctranslate2, out, checkpoint, beam=1) == ours(checkpoint, SENTENCES, 1)


def ct2_translate(ctranslate2, directory: Path, checkpoint: Path, beam: int) -> list[str]:
    """What a CTranslate2 user writes: tokens in (the model appends </s>), tokens out."""
    state = ckpt.load_checkpoint(checkpoint)
    src_tok = Tokenizer.from_str(state["tokenizers"]["src"])
    tgt_tok = Tokenizer.from_str(state["tokenizers"]["tgt"])
    translator = ctranslate2.Translator(str(directory), device="cpu", intra_threads=1)
    outputs = []
    for e in src_tok.encode_batch(SENTENCES, add_special_tokens=False):
        # one at a time: our limit, source ids (</s> included) + 50, is per sentence
        result = translator.translate_batch([e.tokens], beam_size=beam,
                                            max_decoding_length=len(e.tokens) + 1 + OFFSET,
                                            suppress_sequences=[["<pad>"], ["<s>"]])[0]
        outputs.append(tgt_tok.decode([tgt_tok.token_to_id(t) for t in result.hypotheses[0]]))
    return outputs


def test_ctranslate2_float32_translates_as_ours_and_int8_loads(trained_run, tmp_path):
    ctranslate2 = pytest.importorskip("ctranslate2", reason="the export extra is not installed "
                                      "(pip install -e '.[export]')")
    checkpoint = trained_run / ckpt.BEST
    fp32 = export(checkpoint, "ct2", tmp_path / "fp32")
    int8 = export(checkpoint, "ct2", tmp_path / "int8", "--quantization", "int8")
    assert (int8 / "model.bin").stat().st_size < (fp32 / "model.bin").stat().st_size
    assert ct2_translate(ctranslate2, fp32, checkpoint, beam=1) == ours(checkpoint, SENTENCES, 1)
    assert all(ct2_translate(ctranslate2, int8, checkpoint, beam=4))
