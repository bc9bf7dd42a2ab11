"""The tokenizer stage trains real tokenizers in real child processes, visibly and under control."""

from __future__ import annotations

import functools
import gzip
import json
import random
import shutil
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
from tokenizers import Tokenizer

from engine.config import config_from_dict
from engine.control import RunControl, RunStopped
from engine.data.corpus import Corpus
from engine.errors import ChildProcessFailed, ConfigError, DataError, EngineError
from engine.events import MergeProgress, RunFailed, WordCountProgress
from engine.pipeline import run as run_pipeline
from engine.tokenizer.stage import load_tokenizer_set, run_tokenizer_stage
from engine.vocab import SPECIALS

MULTI30K = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "multi30k").resolve()

SENTENCES = [
    ("A man in a blue shirt is standing on a ladder.", "Ein Mann in einem blauen Hemd steht auf einer Leiter."),
    ("Two dogs play in the snow, near the old house.", "Zwei Hunde spielen im Schnee, nahe dem alten Haus."),
    ("A girl reads a book while her father cooks dinner.", "Ein Mädchen liest ein Buch, während ihr Vater kocht."),
    ("The children are running across the green field!", "Die Kinder rennen über das grüne Feld!"),
    ("Is the woman with the red hat waiting for a bus?", "Wartet die Frau mit dem roten Hut auf einen Bus?"),
]


def small_corpus(copies: int = 20) -> Corpus:
    return Corpus(train=SENTENCES * copies, valid=SENTENCES[:1], test=SENTENCES[:1])


@functools.lru_cache(maxsize=None)
def random_word_corpus(words: int, seed: int = 0) -> Corpus:
    """Made-up words, each seen twice: many pairs of equal frequency (ties) and many merges."""
    rng = random.Random(seed)
    vocabulary = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(4, 10)))
                  for _ in range(words)]
    sentences = [" ".join(vocabulary[i:i + 10]) for i in range(0, words, 10)]
    return Corpus(train=list(zip(sentences, sentences)), valid=[], test=[])


class Run:
    """A tokenizer stage run in ``run_dir``, recording each event with its arrival time."""

    def __init__(self, run_dir: Path, corpus: Corpus, on_event=None, **tokenizer) -> None:
        self.events: list[tuple[float, object]] = []
        self.on_event = on_event
        self.control = RunControl()
        config = config_from_dict({"tokenizer": {"vocab_size": 300, "min_frequency": 2, **tokenizer}})
        run_dir.mkdir(parents=True, exist_ok=True)
        self.config, self.run_dir, self.corpus = config, run_dir, corpus

    def emit(self, event: object) -> None:
        self.events.append((time.monotonic(), event))
        if self.on_event is not None:
            self.on_event(self, event)

    def __call__(self):
        return run_tokenizer_stage(self.config.tokenizer, self.corpus, self.run_dir, self.emit,
                                   self.control)

    def of(self, kind: type) -> list:
        return [event for _, event in self.events if isinstance(event, kind)]


def children() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


# --- training ------------------------------------------------------------------------------


def test_a_shared_bpe_tokenizer_is_trained_with_progress_and_decodes_to_the_original_text(tmp_path):
    run = Run(tmp_path / "run", small_corpus())
    result = run()

    tokenizers = result.output
    assert tokenizers.shared and tokenizers.src is tokenizers.tgt
    assert tokenizers.files == [tmp_path / "run" / "tokenizer.json"]
    loaded = Tokenizer.from_file(str(tokenizers.files[0]))
    assert [loaded.id_to_token(i) for i in range(4)] == SPECIALS
    for src, tgt in SENTENCES:
        for text in (src, tgt):
            ids = loaded.encode(text).ids
            assert SPECIALS[1] not in loaded.encode(text).tokens
            assert loaded.decode(ids) == text
    # no post-processor: the encode stage adds <s> and </s> itself
    assert 2 not in loaded.encode(SENTENCES[0][0]).ids and 3 not in loaded.encode(SENTENCES[0][0]).ids

    counts = run.of(WordCountProgress)
    assert counts[-1].done == counts[-1].total == 2 * len(small_corpus().train)
    merges = run.of(MergeProgress)
    final = merges[-1]
    assert final.merges == final.target_merges == result.info["merges"] > 0
    assert final.vocab_size == result.info["vocab_size"] == loaded.get_vocab_size() <= 300
    assert result.info["alphabet"] + len(SPECIALS) + result.info["merges"] == result.info["vocab_size"]
    assert result.info["kind"] == "bpe" and result.info["unique_words"] > 50
    assert result.reused is False and result.info["reused"] is False
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["tokenizer.json",
                                                                     "tokenizer.meta.json"]
    assert children() == []


def test_one_tokenizer_per_language(tmp_path):
    run = Run(tmp_path / "run", small_corpus(), shared=False, vocab_size=150)
    result = run()

    en, de = result.output.src, result.output.tgt
    assert not result.output.shared and en is not de
    assert [p.name for p in result.output.files] == ["tokenizer.en.json", "tokenizer.de.json"]
    assert "ä" in de.get_vocab() and "ä" not in en.get_vocab()  # each saw its own language
    assert en.decode(en.encode(SENTENCES[1][0]).ids) == SENTENCES[1][0]
    assert de.decode(de.encode(SENTENCES[1][1]).ids) == SENTENCES[1][1]
    assert [e.language for e in run.of(MergeProgress) if e.merges == e.target_merges] == ["en", "de"]
    assert [e.total for e in run.of(WordCountProgress) if e.done == e.total] == [100, 100]
    assert result.info["vocab_size_en"] == en.get_vocab_size()
    assert result.info["vocab_size_de"] == de.get_vocab_size()

    again = load_tokenizer_set(tmp_path / "run", run.config)
    assert again.src.to_str() == en.to_str() and again.tgt.to_str() == de.to_str()


def test_wordpiece_is_bpe_with_a_continuing_prefix_keeping_only_the_vocabulary(tmp_path):
    result = Run(tmp_path / "run", small_corpus(), kind="wordpiece")()

    saved = json.loads(result.output.files[0].read_text(encoding="utf-8"))
    assert saved["model"]["type"] == "WordPiece" and "merges" not in saved["model"]
    vocab = result.output.src.get_vocab()
    assert any(token.startswith("##") for token in vocab)
    assert [result.output.src.id_to_token(i) for i in range(4)] == SPECIALS
    text = "Two dogs play in the snow, near the old house."
    assert result.output.src.decode(result.output.src.encode(text).ids) == text


@pytest.mark.skipif(not MULTI30K.is_dir(), reason=f"real data not found at {MULTI30K}")
def test_real_sentences_round_trip(tmp_path):
    with gzip.open(MULTI30K / "train.en.gz", "rt", encoding="utf-8") as en, \
            gzip.open(MULTI30K / "train.de.gz", "rt", encoding="utf-8") as de:
        pairs = [(s.rstrip("\n"), t.rstrip("\n")) for s, t, _ in zip(en, de, range(3000))]
    result = Run(tmp_path / "run", Corpus(train=pairs, valid=[], test=[]), vocab_size=2000)()
    tokenizer = result.output.src
    for src, tgt in pairs[:200]:
        assert tokenizer.decode(tokenizer.encode(src).ids) == src
        assert tokenizer.decode(tokenizer.encode(tgt).ids) == tgt


def test_the_one_regex_split_makes_the_pieces_of_metaspace_then_punctuation(multi30k_dir):
    """Recipe 2 splits punctuation off in the same pass that cuts words (issue 26: Punctuation
    after Metaspace cost 1.47x the time of Metaspace alone). The pieces and their offsets are
    recipe 1's, so the trained tokenizer is too: on every Multi30k line, and on what a corpus
    may hold that Multi30k does not (spaces doubled or leading, ASCII symbols, Unicode
    quotes and dashes, a literal "▁")."""
    from tokenizers import pre_tokenizers

    from engine.tokenizer.recipes import new_tokenizer

    recipe_1 = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation()])
    recipe = new_tokenizer("bpe").pre_tokenizer
    lines = ["a  b", " lead", "  two", "trail ", "x (hi) y", "3$ + 4 = <7> ^_^ `q` | ~ ok",
             "«Anführungszeichen» „so“ – dash — em…", "tab\there", "", "▁already", "a▁b",
             "¿Qué? ¡Sí!", "l'homme", "e-mail 3.5 km/h", "a[b]c\\d {x}"]
    for name in ("train.en.gz", "train.de.gz", "val.en.gz", "val.de.gz"):
        with gzip.open(multi30k_dir / name, "rt", encoding="utf-8") as lines_in:
            lines += [line.rstrip("\n") for line in lines_in]
    different = [line for line in lines
                 if recipe.pre_tokenize_str(line) != recipe_1.pre_tokenize_str(line)]
    assert different == [] and len(lines) > 60_000
    assert [piece for piece, _ in recipe.pre_tokenize_str("A dog, (wet) runs.")] == [
        "▁A", "▁dog", ",", "▁", "(", "wet", ")", "▁runs", "."]


# --- determinism and reuse -----------------------------------------------------------------


def test_bpe_is_identical_from_two_separate_processes(tmp_path):
    corpus = random_word_corpus(20_000)  # every word twice: ties everywhere
    first = Run(tmp_path / "a", corpus, vocab_size=3000)()
    second = Run(tmp_path / "b", corpus, vocab_size=3000)()
    assert first.info["merges"] > 2000
    assert first.output.files[0].read_bytes() == second.output.files[0].read_bytes()


def test_wordpiece_from_two_processes_agrees_on_size_specials_and_alphabet(tmp_path):
    # Not on every token: "##" makes tokenizers break ties by hash-map order, per process.
    corpus = random_word_corpus(5_000)
    vocabs = [Run(tmp_path / name, corpus, vocab_size=1500, kind="wordpiece")().output.src.get_vocab()
              for name in ("a", "b")]
    assert len(vocabs[0]) == len(vocabs[1]) == 1500
    for vocab in vocabs:
        assert sorted(vocab, key=vocab.get)[:4] == SPECIALS
    singles = [{t for t in vocab if len(t.removeprefix("##")) == 1} for vocab in vocabs]
    assert singles[0] == singles[1]


def test_the_second_run_with_the_same_inputs_reuses_the_tokenizer(tmp_path):
    first = Run(tmp_path / "run", small_corpus())()
    second_run = Run(tmp_path / "run", small_corpus())
    second = second_run()

    assert second.reused and second.info["reused"] is True
    assert second_run.of(WordCountProgress) == [] and second_run.of(MergeProgress) == []
    assert second.output.src.to_str() == first.output.src.to_str()
    assert second.info["vocab_size"] == first.info["vocab_size"]

    changed = Run(tmp_path / "run", small_corpus(), vocab_size=200)()
    assert not changed.reused and changed.output.src.get_vocab_size() <= 200
    other_data = Run(tmp_path / "run", small_corpus(copies=21), vocab_size=200)()
    assert not other_data.reused


def test_a_given_tokenizer_json_is_used_for_both_sides(tmp_path):
    trained = Run(tmp_path / "first", small_corpus())().output.files[0]
    run = Run(tmp_path / "second", small_corpus(), shared=False, path=str(trained))
    result = run()
    assert result.reused and result.output.shared and result.output.src is result.output.tgt
    assert result.output.files == [tmp_path / "second" / "tokenizer.json"]
    assert result.output.files[0].read_bytes() == trained.read_bytes()
    assert run.of(MergeProgress) == []


# --- bad input -----------------------------------------------------------------------------


def test_vocab_size_below_alphabet_plus_specials_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError) as error:
        Run(tmp_path / "run", small_corpus(), vocab_size=20)()
    message = str(error.value)
    assert "\n" not in message and "[tokenizer] vocab_size = 20" in message
    assert "alphabet" in message and "special tokens" in message
    # the real minimum: every character of the training text, the word-start mark, 4 specials
    characters = {c for pair in small_corpus().train for side in pair for c in side} - {" "}
    assert f"use at least {len(characters) + 1 + len(SPECIALS)}," in message
    assert not (tmp_path / "run" / "tokenizer.json").exists()
    assert children() == []


def test_an_empty_corpus_is_a_one_line_error(tmp_path):
    with pytest.raises(DataError, match="training split is empty"):
        Run(tmp_path / "run", Corpus(train=[], valid=[], test=[]))()
    with pytest.raises(DataError, match="no text"):
        Run(tmp_path / "run", Corpus(train=[("", " ")] * 10, valid=[], test=[]))()
    assert children() == []


def test_a_corrupt_or_foreign_tokenizer_json_is_a_one_line_error_naming_it(tmp_path):
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"version": "1.0", "model": ', encoding="utf-8")
    with pytest.raises(EngineError) as error:
        Run(tmp_path / "run", small_corpus(), path=str(corrupt))()
    assert "\n" not in str(error.value)
    assert str(corrupt) in str(error.value) and "not a valid tokenizer.json" in str(error.value)

    trained = Run(tmp_path / "first", small_corpus())().output.src
    foreign = tmp_path / "foreign.json"
    data = json.loads(trained.to_str())
    data["added_tokens"][0]["content"] = "[PAD]"
    vocab = data["model"]["vocab"]
    vocab["[PAD]"] = vocab.pop("<pad>")
    foreign.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(EngineError, match=r"ids 0-3 must be the special tokens <pad> <unk> <s> </s>"):
        Run(tmp_path / "run2", small_corpus(), path=str(foreign))()


# --- live progress, pause, stop, a dying child ---------------------------------------------

PAUSE_SECONDS = 5.0
BIG = dict(vocab_size=30_000)  # with random_word_corpus(100_000): merging takes a few seconds


@pytest.fixture(scope="module")
def unpaused(tmp_path_factory) -> Run:
    run = Run(tmp_path_factory.mktemp("unpaused"), random_word_corpus(100_000), **BIG)
    run.result = run()
    return run


def test_merge_events_arrive_live_and_throttled(unpaused):
    times = [t for t, e in unpaused.events if isinstance(e, MergeProgress)]
    merges = [e.merges for e in unpaused.of(MergeProgress)]
    assert merges == sorted(merges) and len(set(merges[:-1])) >= 4  # live, not all at the end
    gaps = [b - a for a, b in zip(times, times[1:-1])]
    assert min(gaps) >= 0.15  # a few a second, not one per merge
    final = unpaused.of(MergeProgress)[-1]
    assert final.merges == final.target_merges and final.vocab_size == 30_000


def test_pause_suspends_the_child_and_the_result_equals_an_unpaused_run(tmp_path, unpaused):
    corpus = random_word_corpus(100_000)
    seen: dict[str, object] = {}

    def pause_mid_merge(run: Run, event: object) -> None:
        if isinstance(event, MergeProgress) and event.merges > 0 and "paused_at" not in seen:
            seen["paused_at"] = event
            run.control.pause()  # from the stage's own thread, mid-merge
            seen["pause_time"] = time.monotonic()
            threading.Thread(target=watch_pause, args=(run,)).start()

    def watch_pause(run: Run) -> None:
        (child,) = children()
        time.sleep(0.5)
        seen["status"] = child.status()
        cpu_before = sum(child.cpu_times()[:2])
        time.sleep(PAUSE_SECONDS - 0.5)
        seen["cpu_while_paused"] = sum(child.cpu_times()[:2]) - cpu_before
        seen["events_while_paused"] = [e for t, e in run.events if t > seen["pause_time"]]
        run.control.resume()

    paused = Run(tmp_path / "paused", corpus, on_event=pause_mid_merge, **BIG)
    result = paused()

    assert seen["status"] == psutil.STATUS_STOPPED
    assert seen["cpu_while_paused"] < 0.05  # the child did not run
    assert seen["events_while_paused"] == []
    merges = paused.of(MergeProgress)
    before = merges.index(seen["paused_at"])
    after = merges[before + 1]
    # Merging all of it takes about 2 s unpaused; had the child run on during the 5 s pause, the
    # first event after resuming would show every merge done.
    assert after.merges < merges[-1].merges
    assert after.elapsed - merges[before].elapsed < 1.0  # elapsed (and the ETA) exclude the pause

    assert result.output.files[0].read_bytes() == unpaused.result.output.files[0].read_bytes()


def test_stop_terminates_the_child_and_leaves_no_tokenizer(tmp_path):
    def stop_mid_merge(run: Run, event: object) -> None:
        if isinstance(event, MergeProgress):
            run.control.stop()

    run = Run(tmp_path / "run", random_word_corpus(100_000), on_event=stop_mid_merge, **BIG)
    with pytest.raises(RunStopped):
        run()
    assert list((tmp_path / "run").iterdir()) == []
    assert children() == []


def test_a_child_that_dies_becomes_an_error_with_its_last_stderr_lines(tmp_path):
    def kill_child(run: Run, event: object) -> None:
        if isinstance(event, MergeProgress):
            for child in children():
                child.send_signal(signal.SIGKILL)

    with pytest.raises(ChildProcessFailed) as error:
        Run(tmp_path / "run", random_word_corpus(100_000), on_event=kill_child, **BIG)()
    assert "killed by SIGKILL" in str(error.value)
    assert error.value.details and "Compute merges" in error.value.details[-1]
    assert list((tmp_path / "run").iterdir()) == []

    def remove_run_dir(run: Run, event: object) -> None:
        if isinstance(event, MergeProgress):
            shutil.rmtree(run.run_dir, ignore_errors=True)

    with pytest.raises(ChildProcessFailed) as error:
        Run(tmp_path / "gone", random_word_corpus(100_000), on_event=remove_run_dir, **BIG)()
    assert "exited with status 1" in str(error.value)
    assert any("No such file or directory" in line for line in error.value.details)
    assert children() == []


def test_through_the_pipeline_a_dying_child_is_a_run_failed_event_with_its_stderr(tmp_path):
    corpus = random_word_corpus(100_000)
    for split in ("train", "valid"):
        for side, lang in ((0, "en"), (1, "de")):
            lines = [pair[side] for pair in corpus.train[: None if split == "train" else 10]]
            (tmp_path / f"{split}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = config_from_dict({
        "data": {"source": "local", "train_src": str(tmp_path / "train.en"),
                 "train_tgt": str(tmp_path / "train.de"), "valid_src": str(tmp_path / "valid.en"),
                 "valid_tgt": str(tmp_path / "valid.de")},
        "tokenizer": BIG})
    events = []

    def emit(event: object) -> None:
        events.append(event)
        if isinstance(event, MergeProgress):
            for child in children():
                child.send_signal(signal.SIGKILL)

    status = run_pipeline(config, tmp_path / "run", emit, until="tokenizer")
    assert status == "failed"
    (failed,) = [e for e in events if isinstance(e, RunFailed)]
    assert failed.stage == "tokenizer" and "killed by SIGKILL" in failed.message
    assert failed.details and "Compute merges" in failed.details[-1]
    assert not (tmp_path / "run" / "tokenizer.json").exists()


# --- from the corpus files -----------------------------------------------------------------


def test_training_from_the_corpus_files_gives_the_tokenizer_of_the_same_sentences_in_memory(
        tmp_path):
    from engine.data.corpus import write_pair_files
    from engine.tokenizer.recipes import train_in_process

    corpus = random_word_corpus(20_000)
    files = write_pair_files(corpus.train, tmp_path / "corpus", "en", "de")
    result = Run(tmp_path / "run", Corpus(train=files, valid=[], test=[]))()
    sentences = [side for pair in corpus.train for side in pair]
    bare = train_in_process(sentences, "bpe", 300, 2)  # no line breaks anywhere in the input
    assert result.output.files[0].read_text() == bare.to_str(pretty=True)
    assert "\n" not in result.output.src.get_vocab()


def test_word_counting_from_files_reports_rising_estimates_then_the_exact_total(tmp_path):
    from engine.data.corpus import write_pair_files

    corpus = random_word_corpus(300_000)  # about 3 MB of text: the trainer reads it for a while
    files = write_pair_files(corpus.train, tmp_path / "corpus", "en", "de")
    run = Run(tmp_path / "run", Corpus(train=files, valid=[], test=[]), vocab_size=2000)
    run()
    counts = run.of(WordCountProgress)
    assert counts[-1].done == counts[-1].total == 2 * len(files)
    assert all(e.done < e.total for e in counts[:-1])  # only the last may read as complete
    assert [e.done for e in counts] == sorted(e.done for e in counts)
