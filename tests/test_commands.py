"""translate, evaluate and average: what a user does with a trained checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_runs import tiny_config

from engine.checkpoint import build_for_inference, load_checkpoint
from engine.control import RunControl
from engine.pipeline import run


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    torch.set_num_threads(1)
    config = tiny_config(data__test_size=20, training__keep_last=0)
    status = run(config, run_dir, lambda event: None, RunControl())
    assert status == "finished"
    return run_dir


def command(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "engine", *args], input=stdin, env=env,
                          capture_output=True, text=True, timeout=180)


def test_translate_arguments_and_a_stream_of_lines(trained_run):
    ckpt = str(trained_run / "checkpoint_last.pt")
    result = command("translate", "--checkpoint", ckpt, "--beam", "2", "The dog sees a cat.")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1 and result.stdout.strip()

    long_line = " ".join(["the big red dog"] * 100)  # far longer than max_len = 48 tokens
    stdin = "The woman reads a book.\n\n" + long_line + "\n"
    result = command("translate", "--checkpoint", ckpt, stdin=stdin)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")[:-1]
    assert len(lines) == 3  # one output line per input line, the empty one included
    assert lines[0].strip() and lines[1] == "" and lines[2].strip()
    assert "Traceback" not in result.stderr


def test_evaluate_prints_sacrebleu_with_its_signature_and_writes_hypotheses(trained_run, tmp_path):
    from engine.data.sample import sample_corpus

    test_pairs = sample_corpus(400, 40, 20, seed=1234).test
    src, ref = tmp_path / "test.en", tmp_path / "test.de"
    src.write_text("".join(s + "\n" for s, _ in test_pairs))
    ref.write_text("".join(t + "\n" for _, t in test_pairs))
    out = tmp_path / "hyp.de"
    result = command("evaluate", "--checkpoint", str(trained_run / "checkpoint_best.pt"),
                     "--src", str(src), "--ref", str(ref), "--beam", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("BLEU = ") and "nrefs:1" in result.stdout
    assert "20 sentences" in result.stdout
    assert len(out.read_text().splitlines()) == 20

    # --paper-bleu: the paper's tokenized, compound-split BLEU on a second line
    result = command("evaluate", "--checkpoint", str(trained_run / "checkpoint_best.pt"),
                     "--src", str(src), "--ref", str(ref), "--beam", "2", "--paper-bleu")
    assert result.returncode == 0, result.stderr
    sacre, paper = result.stdout.splitlines()
    assert sacre.startswith("BLEU = ") and "tok:13a|" in sacre
    assert paper.startswith("paper BLEU = ") and "tok:13a+compound-split" in paper

    # --lowercase: lowercased sacreBLEU, as the Multi30k literature reports, after the cased
    result = command("evaluate", "--checkpoint", str(trained_run / "checkpoint_best.pt"),
                     "--src", str(src), "--ref", str(ref), "--beam", "2", "--lowercase")
    assert result.returncode == 0, result.stderr
    cased, lower = result.stdout.splitlines()
    assert cased == sacre and "case:mixed" in cased
    assert lower.startswith("lowercased BLEU = ") and "case:lc" in lower
    assert float(lower.split()[3]) >= float(cased.split()[2])


def test_evaluate_refuses_misaligned_files(trained_run, tmp_path):
    src, ref = tmp_path / "a.en", tmp_path / "a.de"
    src.write_text("one\ntwo\n")
    ref.write_text("eins\n")
    result = command("evaluate", "--checkpoint", str(trained_run / "checkpoint_last.pt"),
                     "--src", str(src), "--ref", str(ref))
    assert result.returncode == 2
    assert "a.en has 2 lines but" in result.stderr and "Traceback" not in result.stderr


def test_averaging_two_checkpoints_gives_a_model_that_loads_and_evaluates(trained_run, tmp_path):
    out = tmp_path / "averaged.pt"
    result = command("average", "--out", str(out), "--last", "2", str(trained_run))
    assert result.returncode == 0, result.stderr
    assert "model_epoch_1.pt, model_epoch_2.pt" in result.stdout
    first, second = (load_checkpoint(trained_run / f"model_epoch_{n}.pt")["model"] for n in (1, 2))
    averaged = torch.load(out, weights_only=True)["model"]
    key = next(k for k, v in averaged.items() if v.is_floating_point())
    torch.testing.assert_close(averaged[key], (first[key] + second[key]) / 2)
    model, src_tok, tgt_tok, config = build_for_inference(out)
    assert config.model.d_model == 32
    result = command("translate", "--checkpoint", str(out), "A man walks.")
    assert result.returncode == 0 and result.stdout.strip()


def test_a_checkpoint_that_is_not_one_is_one_line(tmp_path):
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a checkpoint")
    result = command("translate", "--checkpoint", str(bogus), "hello")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    result = command("average", "--out", str(tmp_path / "x.pt"), "--last", "3", str(tmp_path))
    assert result.returncode == 2 and "--last 3 needs" in result.stderr
