"""The data stage: the sample, local parallel files (plain and .gz) and WMT14 through datasets."""

import gzip
import socket

import pytest

from engine.config import DataConfig, load_config
from engine.data.corpus import LoadReport
from engine.data.local import read_parallel
from engine.data.stage import load_corpus, run_data_stage
from engine.data.wmt14 import hub_reachable, load_wmt14
from engine.errors import DataError
from engine.events import Notice, RunFailed, StageFinished
from engine.pipeline import run


def _local(train, valid, test=("", ""), **sizes) -> DataConfig:
    return DataConfig(source="local", train_src=str(train[0]), train_tgt=str(train[1]),
                      valid_src=str(valid[0]), valid_tgt=str(valid[1]),
                      test_src=str(test[0]), test_tgt=str(test[1]), **sizes)


def _data_error(cfg_or_call) -> str:
    with pytest.raises(DataError) as info:
        cfg_or_call() if callable(cfg_or_call) else load_corpus(cfg_or_call)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- sample --------------------------------------------------------------------------------


def test_the_sample_source_honours_sizes_and_direction():
    en_de = load_corpus(DataConfig(source="sample", train_size=300, valid_size=20,
                                   test_size=10, seed=5))
    assert en_de.counts() == {"train": 300, "valid": 20, "test": 10}
    de_en = load_corpus(DataConfig(source="sample", train_size=300, valid_size=20,
                                   test_size=10, seed=5, src_lang="de", tgt_lang="en"))
    assert (de_en.src_lang, de_en.tgt_lang) == ("de", "en")
    assert de_en.train == [(de, en) for en, de in en_de.train]
    assert de_en.fingerprint() != en_de.fingerprint()


def test_the_sample_has_english_and_german_only():
    message = _data_error(DataConfig(source="sample", src_lang="en", tgt_lang="fr"))
    assert "en-fr" in message


# --- local files ---------------------------------------------------------------------------


def test_local_plain_and_gzip_files_load_as_aligned_pairs(write_text):
    train = (write_text("train.en", ["A dog runs.", "Two cats sleep.", "A bird sings."]),
             write_text("train.de.gz", ["Ein Hund rennt.", "Zwei Katzen schlafen.",
                                        "Ein Vogel singt."]))
    valid = (write_text("valid.en.gz", ["Hello."]), write_text("valid.de", ["Hallo."]))
    corpus = load_corpus(_local(train, valid))
    assert corpus.train == [("A dog runs.", "Ein Hund rennt."),
                            ("Two cats sleep.", "Zwei Katzen schlafen."),
                            ("A bird sings.", "Ein Vogel singt.")]
    assert corpus.valid == [("Hello.", "Hallo.")]
    assert corpus.test == []  # test files are optional


def test_local_sizes_take_the_first_pairs_and_say_when_a_split_is_short(write_text):
    train = (write_text("t.en", [f"s{i}" for i in range(10)]),
             write_text("t.de", [f"z{i}" for i in range(10)]))
    valid = (write_text("v.en", ["a", "b"]), write_text("v.de", ["x", "y"]))
    report = LoadReport()
    corpus = load_corpus(_local(train, valid, train_size=4, valid_size=5), report)
    assert corpus.train == [("s0", "z0"), ("s1", "z1"), ("s2", "z2"), ("s3", "z3")]
    assert corpus.valid == [("a", "x"), ("b", "y")]
    assert len(report.notes) == 1 and "valid_size = 5" in report.notes[0]


def test_blank_lines_on_both_sides_are_dropped_and_counted(write_text):
    train = (write_text("t.en", ["one", "", "two", "  ", "three"]),
             write_text("t.de", ["eins", "", "zwei", "", "drei"]))
    valid = (write_text("v.en", ["x"]), write_text("v.de", ["y"]))
    report = LoadReport()
    corpus = load_corpus(_local(train, valid), report)
    assert corpus.train == [("one", "eins"), ("two", "zwei"), ("three", "drei")]
    assert report.dropped_blank == {"train": 2}


def test_windows_line_ends_and_a_byte_order_mark_are_not_part_of_sentences(write_text):
    src = write_text("bom.en", data="\ufeffHello.\r\nBye.\r\n".encode("utf-8"))
    tgt = write_text("bom.de", ["Hallo.", "Tschüss."])
    assert read_parallel(src, tgt) == ([("Hello.", "Hallo."), ("Bye.", "Tschüss.")], 0)


def test_multi30k_loads_all_its_pairs(multi30k_dir):
    cfg = _local((multi30k_dir / "train.en.gz", multi30k_dir / "train.de.gz"),
                 (multi30k_dir / "val.en.gz", multi30k_dir / "val.de.gz"),
                 (multi30k_dir / "test_2016_flickr.en.gz", multi30k_dir / "test_2016_flickr.de.gz"))
    corpus = load_corpus(cfg)
    assert corpus.counts() == {"train": 29000, "valid": 1014, "test": 1000}
    assert corpus.train[0][0].startswith("Two young, White males are outside")


# --- bad local input: one line that names the file (and line) ------------------------------


def test_a_missing_file_is_named(write_text, tmp_path):
    valid = (write_text("v.en", ["x"]), write_text("v.de", ["y"]))
    missing = tmp_path / "nope.en"
    message = _data_error(_local((missing, valid[1]), valid))
    assert str(missing) in message and "not found" in message


def test_mismatched_line_counts_name_both_files_and_counts(write_text):
    train = (write_text("t.en", ["a", "b", "c"]), write_text("t.de", ["x", "y"]))
    valid = (write_text("v.en", ["x"]), write_text("v.de", ["y"]))
    message = _data_error(_local(train, valid))
    assert str(train[0]) in message and str(train[1]) in message
    assert "3 lines" in message and "has 2" in message


def test_an_empty_file_is_named(write_text):
    train = (write_text("t.en", ["a"]), write_text("t.de", ["x"]))
    valid = (write_text("v.en", []), write_text("v.de", ["y"]))
    message = _data_error(_local(train, valid))
    assert str(valid[0]) in message and "empty" in message


def test_an_undecodable_line_is_named_with_its_number(write_text):
    src = write_text("bad.en.gz", data=b"fine\nalso fine\ncaf\xe9 latin-1\n")
    tgt = write_text("bad.de", ["gut", "auch gut", "Kaffee"])
    valid = (write_text("v.en", ["x"]), write_text("v.de", ["y"]))
    message = _data_error(_local((src, tgt), valid))
    assert str(src) in message and "line 3" in message and "UTF-8" in message


def test_a_blank_line_on_one_side_only_is_a_misalignment(write_text):
    train = (write_text("t.en", ["a", "b", "c"]), write_text("t.de", ["x", "", "z"]))
    valid = (write_text("v.en", ["x"]), write_text("v.de", ["y"]))
    message = _data_error(_local(train, valid))
    assert str(train[1]) in message and "line 2" in message and "misaligned" in message


@pytest.mark.parametrize("damage", ["not gzip at all", "truncated"])
def test_a_corrupt_gzip_file_is_named(tmp_path, write_text, damage):
    bad = tmp_path / "broken.en.gz"
    if damage == "not gzip at all":
        bad.write_bytes(b"plain text with a .gz name\n")
    else:
        bad.write_bytes(gzip.compress(b"a\nb\nc\n" * 1000)[:200])
    tgt = write_text("t.de", ["x"])
    valid = (write_text("v.en", ["x"]), write_text("v.de", ["y"]))
    message = _data_error(_local((bad, tgt), valid))
    assert str(bad) in message and "gzip" in message


# --- WMT14 ---------------------------------------------------------------------------------


def test_wmt14_gives_the_first_training_pairs_english_to_german(wmt14_parquet):
    cfg = DataConfig(source="wmt14", train_size=8, valid_size=3, test_size=0)
    report = LoadReport()
    corpus = load_wmt14(cfg, data_files=wmt14_parquet, report=report)
    # row 5 is blank on both sides: dropped, and the 8 pairs run on to row 8
    assert [en for en, _ in corpus.train] == [f"Sentence {i} of train." for i in
                                              (0, 1, 2, 3, 4, 6, 7, 8)]
    assert corpus.train[0] == ("Sentence 0 of train.", "Satz 0 von train.")
    assert corpus.valid == [(f"Sentence {i} of validation.", f"Satz {i} von validation.")
                            for i in range(3)]
    assert len(corpus.test) == 10  # 0 = all of newstest2014
    assert report.dropped_blank == {"train": 1}


def test_wmt14_german_to_english_swaps_every_pair(wmt14_parquet):
    cfg = DataConfig(source="wmt14", train_size=4, valid_size=2, test_size=2,
                     src_lang="de", tgt_lang="en")
    corpus = load_wmt14(cfg, data_files=wmt14_parquet)
    assert (corpus.src_lang, corpus.tgt_lang) == ("de", "en")
    assert corpus.train[0] == ("Satz 0 von train.", "Sentence 0 of train.")
    assert corpus.test == [("Satz 0 von test.", "Sentence 0 of test."),
                           ("Satz 1 von test.", "Sentence 1 of test.")]


def test_all_of_wmt14_goes_through_the_cached_non_streaming_path(wmt14_parquet, datasets_cache):
    corpus = load_wmt14(DataConfig(source="wmt14"), data_files=wmt14_parquet)
    assert corpus.counts() == {"train": 39, "valid": 12, "test": 10}
    assert datasets_cache.exists()  # prepared once, reused by later runs


def test_a_parquet_file_without_translations_is_named(tmp_path, datasets_cache):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"text": ["a", "b"]}), path)
    message = _data_error(lambda: load_wmt14(DataConfig(source="wmt14", train_size=2),
                                             data_files={"train": str(path)}))
    assert str(path) in message and "translation" in message


@pytest.mark.timeout(20)  # datasets' own retries would take ~25 s
def test_wmt14_offline_fails_at_once_with_the_alternatives():
    message = _data_error(DataConfig(source="wmt14", train_size=1000))
    assert message.startswith("WMT14 could not be downloaded")
    assert "offline" in message
    assert "--preset sample" in message and "data.source=local" in message


def test_an_unreachable_hub_is_noticed_in_seconds():
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert hub_reachable(f"http://127.0.0.1:{port}", timeout=2.0) is False


# --- the stage -----------------------------------------------------------------------------


def test_the_data_stage_reports_counts_and_dropped_blank_pairs(write_text, tmp_path):
    train = (write_text("t.en", ["one", "", "two"]), write_text("t.de", ["eins", "", "zwei"]))
    valid = (write_text("v.en", ["x"]), write_text("v.de", ["y"]))
    config = load_config("sample", [
        "data.source=local", f"data.train_src={train[0]}", f"data.train_tgt={train[1]}",
        f"data.valid_src={valid[0]}", f"data.valid_tgt={valid[1]}", "data.train_size=0",
        "data.valid_size=0", "data.test_size=0"])
    events = []
    result = run_data_stage(config.data, events.append)
    assert result.output.train == [("one", "eins"), ("two", "zwei")]
    assert result.info["train"] == 2 and result.info["valid"] == 1 and result.info["test"] == 0
    assert result.info["source"] == "local" and result.info["dropped_blank"] == 1
    notices = [e.text for e in events if isinstance(e, Notice)]
    assert any("Dropped 1 blank line pair" in text for text in notices)


def test_a_run_until_data_loads_the_sample_preset(tmp_path):
    config = load_config("sample", ["data.train_size=500", "data.valid_size=50",
                                    "data.test_size=50"])
    events = []
    status = run(config, tmp_path / "run", events.append, until="data")
    assert status == "finished"
    finished = [e for e in events if isinstance(e, StageFinished)]
    assert finished[0].stage == "data"
    assert finished[0].info["train"] == 500 and finished[0].info["source"] == "sample"


def test_a_run_with_a_misaligned_file_fails_with_one_line(write_text, tmp_path):
    train = (write_text("t.en", ["a", "b"]), write_text("t.de", ["x"]))
    valid = (write_text("v.en", ["x"]), write_text("v.de", ["y"]))
    config = load_config("sample", [
        "data.source=local", f"data.train_src={train[0]}", f"data.train_tgt={train[1]}",
        f"data.valid_src={valid[0]}", f"data.valid_tgt={valid[1]}"])
    events = []
    assert run(config, tmp_path / "run", events.append, until="data") == "failed"
    failed = [e for e in events if isinstance(e, RunFailed)]
    assert failed[0].stage == "data" and str(train[1]) in failed[0].message
    assert failed[0].details == []  # a user error: no traceback


# --- at scale: the training pairs stream into files, progress as events --------------------


def test_a_run_streams_the_training_pairs_into_corpus_files_with_progress(write_text, tmp_path):
    from engine.data.corpus import PairFiles
    from engine.events import DataProgress

    lines = [f"Sentence number {i}." for i in range(2500)]
    train = (write_text("t.en.gz", lines + ["", "Last one."]),
             write_text("t.de", [s.replace("Sentence", "Satz") for s in lines] + ["", "Zuletzt."]))
    valid = (write_text("v.en", ["x", "y"]), write_text("v.de", ["X", "Y"]))
    cfg = _local(train, valid)
    events = []
    result = run_data_stage(cfg, events.append, tmp_path / "run")
    corpus = result.output
    assert isinstance(corpus.train, PairFiles) and len(corpus.train) == 2501
    folder = tmp_path / "run" / "corpus"
    assert sorted(p.name for p in folder.iterdir()) == ["train.src.txt", "train.tgt.txt"]
    assert (folder / "train.src.txt").read_text().splitlines() == lines + ["Last one."]
    in_memory = load_corpus(cfg)
    assert list(corpus.train) == in_memory.train
    assert corpus.fingerprint() == in_memory.fingerprint()  # caches keyed on it still match
    finals = [(e.split, e.pairs) for e in events if isinstance(e, DataProgress) and e.final]
    assert finals == [("train", 2501), ("valid", 2)]  # no test files: no test split to read
    assert result.info["dropped_blank"] == 1


def test_the_other_ranks_of_a_torchrun_job_read_the_corpus_files_rank_0_wrote(write_text, tmp_path):
    lines = [f"Sentence number {i}." for i in range(1200)]
    train = (write_text("t.en", lines), write_text("t.de", [s.replace("Sentence", "Satz")
                                                              for s in lines]))
    cfg = _local(train, (write_text("v.en", ["x"]), write_text("v.de", ["X"])))
    written = run_data_stage(cfg, lambda event: None, tmp_path / "run").output  # rank 0
    files = [written.train.src, written.train.tgt]
    before = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in files]
    other = run_data_stage(cfg, lambda event: None, tmp_path / "run", write_train=False).output
    assert [(p.stat().st_ino, p.stat().st_mtime_ns) for p in files] == before  # not rewritten
    assert [other.train.src, other.train.tgt] == files and len(other.train) == 1200
    assert other.fingerprint() == written.fingerprint()  # what the ranks compare
    assert other.train.chars == written.train.chars
    assert sorted(p.name for p in (tmp_path / "run" / "corpus").iterdir()) == [
        "train.src.txt", "train.tgt.txt"]  # no temporary file either


def test_train_size_stops_reading_and_counts_the_blank_pairs_it_read(write_text, tmp_path):
    train = (write_text("t.en", ["a", "", "b", "c", "d"]),
             write_text("t.de", ["x", "", "y", "z", "w"]))
    valid = (write_text("v.en", ["x"]), write_text("v.de", ["y"]))
    report = LoadReport()
    corpus = load_corpus(_local(train, valid, train_size=2), report, train_dir=tmp_path / "c")
    assert list(corpus.train) == [("a", "x"), ("b", "y")]
    assert report.dropped_blank == {"train": 1}


def test_wmt14_loading_reports_the_library_progress_as_events_not_on_stderr(wmt14_parquet,
                                                                           capfd):
    from engine.data.wmt14 import wmt14_splits
    from engine.events import DownloadProgress

    events = []
    splits = wmt14_splits(DataConfig(source="wmt14"), data_files=wmt14_parquet,
                          emit=events.append)
    assert len(list(splits["train"])) == 39
    progress = [e for e in events if isinstance(e, DownloadProgress)]
    generating = [e for e in progress if e.what == "Generating train split"]
    assert generating[-1].final and generating[-1].done == 40 and generating[-1].unit == "examples"
    assert all(e.per_second >= 0 and e.elapsed >= 0 for e in progress)
    assert capfd.readouterr().err == ""  # no bar drawn where the app draws


def test_a_download_reports_bytes_speed_and_eta(wmt14_parquet, datasets_cache, monkeypatch,
                                                capfd):
    """The bytes path of a real download, from an in-memory filesystem: datasets' own
    downloader (fsspec_get + its tqdm callback) runs as it would against the Hub."""
    from pathlib import Path

    import datasets
    import fsspec

    from engine.data.library_progress import library_progress
    from engine.events import DownloadProgress

    data = Path(wmt14_parquet["train"]).read_bytes()
    url = f"memory://{datasets_cache.parent.name}/train.parquet"  # new to every cache
    fsspec.filesystem("memory").pipe(url, data)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # memory:// is no network
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    events = []
    datasets.disable_progress_bars()
    with library_progress(events.append):
        rows = datasets.load_dataset("parquet", split="train",
                                     data_files={"train": url})
    assert len(rows) == 40 and (datasets_cache / "downloads").is_dir()
    downloads = [e for e in events if isinstance(e, DownloadProgress) and e.unit == "B"]
    assert downloads[-1].final and downloads[-1].done == downloads[-1].total == len(data)
    assert capfd.readouterr().err == ""
    # outside the block the library's bars are its own again: switched off, no events
    events.clear()
    datasets.load_dataset("parquet", split="train", data_files=wmt14_parquet["validation"])
    assert events == [] and capfd.readouterr().err == ""
