"""Nothing lost: a crash mid-epoch, a diverging run, a full or read-only disk, bad input.

Each story runs the real engine (the tiny sample run of tiny_runs.py) or the real command line in
a child process, then checks the message a user sees and that what was on disk survived: the
checkpoints still load, and files that must not change keep their sha256.
The full disk is a real one: a small tmpfs mounted for the test (root only; without root those
tests are skipped and the fault-injection test of the events writer still runs).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_runs import tiny_config, train_run

from engine import checkpoint as ckpt
from engine import events as ev
from engine.control import RunControl
from engine.eventlog import read_events
from engine.pipeline import run
from engine.train import loop as train_loop

pytestmark = pytest.mark.usefixtures("one_thread")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fingerprint(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` and its sha256: what "nothing changed" compares."""
    return {str(p.relative_to(directory)): sha256(p)
            for p in sorted(Path(directory).rglob("*")) if p.is_file()}


def cli(*args: str, stdin: bytes | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], input=stdin, env=ENV,
                          capture_output=True, timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The stderr of a refused command: exactly one line starting with "error: "."""
    err = result.stderr.decode("utf-8")
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err.strip()




def of(events, kind):
    return [e for e in events if isinstance(e, kind)]


def preset_file(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(tiny_config(**changes).to_toml(), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished two-epoch tiny run: checkpoint_last/best, model_epoch_1/2."""
    run_dir = tmp_path_factory.mktemp("trained")
    torch.set_num_threads(1)
    status, _ = train_run(run_dir, tiny_config(training__keep_last=0, data__test_size=20))
    assert status == "finished"
    return run_dir


@pytest.fixture
def small_disk(tmp_path):
    """mount(size) -> a fresh tmpfs of that many bytes, unmounted afterwards (root only)."""
    mounts = []

    def mount(size: int, read_only: bool = False) -> Path:
        where = tmp_path / f"disk{len(mounts)}"
        where.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                              capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
        mounts.append(where)
        return where

    yield mount
    for where in mounts:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill_disk(directory: Path, leave: int) -> Path:
    """Fill the filesystem of ``directory`` up, then give back about ``leave`` bytes."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while f.write(b"\0" * 4096):
                pass
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    os.truncate(filler, max(filler.stat().st_size - leave, 0))
    return filler


# --- a crash mid-epoch ----------------------------------------------------------------------


def test_a_crash_mid_epoch_loses_at_most_the_updates_since_the_last_timed_save(tmp_path,
                                                                                monkeypatch):
    monkeypatch.setattr(train_loop, "PROGRESS_SECONDS", 0.0)  # a loss for every batch
    # a save at every update: the crash below then loses nothing but its own batch
    config = tiny_config(training__save_every_minutes=1e-9)
    status, straight = train_run(tmp_path / "straight", config)
    assert status == "finished"

    class Crash(Exception):
        pass

    def crash_in_epoch_2(event):
        if isinstance(event, ev.BatchProgress) and (event.epoch, event.batch) == (2, 5):
            raise Crash()  # as sudden as a kill: nothing after this point runs

    status, first = train_run(tmp_path / "crashed", config, on_event=crash_in_epoch_2)
    assert status == "failed"
    saved = [c for c in of(first, ev.CheckpointSaved) if c.name == ckpt.LAST]
    assert len(saved) > 2 * 2  # mid-epoch saves, not only epoch ends
    state = ckpt.load_checkpoint(tmp_path / "crashed" / ckpt.LAST)
    assert (state["epoch"], state["batch_in_epoch"]) == (1, 4)  # the update before the crash

    status, second = train_run(tmp_path / "crashed", config, resume="last")
    assert status == "finished"
    losses = [(p.epoch, p.batch, p.step, p.loss) for p in of(straight, ev.BatchProgress)]
    resumed = [(p.epoch, p.batch, p.step, p.loss) for p in of(second, ev.BatchProgress)]
    assert resumed == losses[-len(resumed):] and resumed[0][:2] == (2, 5)
    assert ([s.val_loss for s in of(second, ev.EpochSummary)]
            == [s.val_loss for s in of(straight, ev.EpochSummary)][-1:])


def test_save_every_minutes_zero_saves_at_epoch_ends_only(tmp_path):
    status, events = train_run(tmp_path, tiny_config(training__save_every_minutes=0))
    assert status == "finished"
    saved = [(c.name, c.epoch) for c in of(events, ev.CheckpointSaved) if c.name == ckpt.LAST]
    assert saved == [(ckpt.LAST, 1), (ckpt.LAST, 2)]


# --- divergence -----------------------------------------------------------------------------


def test_a_diverging_run_stops_and_replaces_no_checkpoint(tmp_path):
    status, _ = train_run(tmp_path, tiny_config(training__epochs=1))
    assert status == "finished"
    before = fingerprint(tmp_path)
    checkpoints = [p for p in before if p.endswith(".pt")]
    assert sorted(checkpoints) == [ckpt.BEST, ckpt.LAST, "model_epoch_1.pt"]

    # the same run continued with a learning rate 1000x too high (clipped, so no NaN): the
    # validation loss ends up finite but far above the best, and a timed save comes due often
    config = tiny_config(training__epochs=3, training__lr_factor=2000.0,
                         training__clip_norm=1.0, training__save_every_minutes=1e-9)
    status, events = train_run(tmp_path, config, resume="last")
    assert status == "failed"
    message = of(events, ev.RunFailed)[0].message
    assert "\n" not in message and message.startswith("training stopped: diverged, validation")
    assert "training.divergence_factor = 5 times the best" in message
    assert f"{tmp_path / ckpt.LAST} (epoch 1, batch 0, step" in message
    assert not of(events, ev.CheckpointSaved)  # no mid-epoch save of the climbing weights
    after = fingerprint(tmp_path)
    assert {p: after[p] for p in checkpoints} == {p: before[p] for p in checkpoints}
    for name in checkpoints:
        assert ckpt.load_checkpoint(tmp_path / name)["epoch"] == 1


def test_a_nan_streak_is_never_saved_by_a_timed_save(tmp_path):
    status, _ = train_run(tmp_path, tiny_config(training__epochs=1))
    assert status == "finished"
    kept = sha256(tmp_path / ckpt.LAST)
    # an absurd learning rate: NaN after the first update; a timed save is due at every update
    config = tiny_config(training__epochs=3, training__lr_factor=1e12,
                         training__max_bad_batches=3, training__save_every_minutes=1e-9)
    status, events = train_run(tmp_path, config, resume="last")
    assert status == "failed"
    assert [s.in_a_row for s in of(events, ev.BatchSkipped)] == [1, 2, 3]
    message = of(events, ev.RunFailed)[0].message
    assert f"{tmp_path / ckpt.LAST} holds the last good state" in message
    assert sha256(tmp_path / ckpt.LAST) == kept and not of(events, ev.CheckpointSaved)


@pytest.mark.parametrize("stop_epoch", [1, 2])
def test_a_resume_that_diverges_keeps_the_good_checkpoints(tmp_path, monkeypatch, stop_epoch):
    """Issue 25 item 7, as a user met it: a run stopped late in an epoch, resumed with a learning
    rate a million times larger. It goes NaN (not always in a row) and its validation loss
    explodes; the guard remembers the loss from before the resume (in the checkpoint) and stops
    it, and checkpoint_last.pt and checkpoint_best.pt keep the weights saved before it."""
    monkeypatch.setattr(train_loop, "PROGRESS_SECONDS", 0.0)  # progress after every update
    control = RunControl()

    def stop_late(event):  # honoured before the epoch's third update from the end
        if (isinstance(event, ev.BatchProgress) and event.epoch == stop_epoch
                and event.batch == event.batches - 3):
            control.stop()

    config = tiny_config(training__epochs=3, training__average_last=0)
    status, _ = train_run(tmp_path, config, control, on_event=stop_late)
    assert status == "stopped"
    names = [ckpt.LAST, ckpt.BEST] if stop_epoch == 2 else [ckpt.LAST]
    saved = {name: ckpt.load_checkpoint(tmp_path / name)["model"] for name in names}
    assert ckpt.load_checkpoint(tmp_path / ckpt.LAST)["epoch"] == stop_epoch - 1

    bad = tiny_config(training__epochs=3, training__lr_factor=2.0e6)
    status, events = train_run(tmp_path, bad, resume="last")
    assert status == "failed"
    message = of(events, ev.RunFailed)[0].message
    assert "\n" not in message and message.startswith("training stopped: ")
    assert str(tmp_path / ckpt.LAST) in message and f"(epoch {stop_epoch - 1}, batch " in message
    assert not of(events, ev.CheckpointSaved)
    if stop_epoch == 2:
        assert f"{tmp_path / ckpt.BEST} holds the best (" in message
    else:
        assert not (tmp_path / ckpt.BEST).exists()  # never made from diverged weights
    for name, weights in saved.items():
        kept = ckpt.load_checkpoint(tmp_path / name)["model"]
        assert kept.keys() == weights.keys()
        assert all(torch.equal(kept[key], weights[key]) for key in weights), name


# --- a full or read-only disk ----------------------------------------------------------------


def test_a_full_disk_while_saving_is_one_line_and_keeps_every_checkpoint(tmp_path, small_disk):
    disk = small_disk(8 * 2**20)
    run_dir = disk / "run"
    preset = preset_file(tmp_path, training__epochs=1)
    first = cli("--preset", str(preset), "--run-dir", str(run_dir))
    assert first.returncode == 0, first.stderr.decode()
    kept = {name: sha256(run_dir / name) for name in (ckpt.LAST, ckpt.BEST, "model_epoch_1.pt")}

    # room for the events of an epoch, not for another checkpoint
    filler = fill_disk(disk, leave=(run_dir / ckpt.LAST).stat().st_size // 2)
    full = cli("--preset", str(preset_file(tmp_path, training__epochs=2)), "--run-dir",
               str(run_dir), "--resume", "last")
    assert full.returncode == 1
    out = full.stdout.decode()
    assert (f"no space left on {disk} (tmpfs) while saving checkpoint_last.pt; the previous "
            "checkpoint is intact") in out
    assert "Traceback" not in out + full.stderr.decode()
    assert {name: sha256(run_dir / name) for name in kept} == kept
    for name in kept:
        ckpt.load_checkpoint(run_dir / name)
    assert not list(run_dir.glob(f"{ckpt.TEMP_PREFIX}*"))  # no half-written temporary left
    lines = (run_dir / "events.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b""  # ends with a whole line
    for line in lines[:-1]:
        json.loads(line)  # every line is whole
    assert any(b'"RunFailed"' in line and b"no space left" in line for line in lines)

    # space again: the run resumes and finishes
    filler.unlink()
    again = cli("--preset", str(preset_file(tmp_path, training__epochs=2)), "--run-dir",
                str(run_dir), "--resume", "last")
    assert again.returncode == 0, again.stdout.decode() + again.stderr.decode()
    assert ckpt.load_checkpoint(run_dir / ckpt.LAST)["epoch"] == 2


def test_a_full_disk_at_start_is_one_line_and_no_torn_event(tmp_path, small_disk):
    disk = small_disk(1 * 2**20)
    run_dir = disk / "run"
    run_dir.mkdir()
    torn = b'{"event": "RunStarted", "run_dir": "x", "pre'  # a killed run's last line
    (run_dir / "events.jsonl").write_bytes(torn)
    fill_disk(disk, leave=0)
    result = cli("--preset", str(preset_file(tmp_path)), "--run-dir", str(run_dir))
    assert result.returncode == 1
    text = result.stdout.decode() + result.stderr.decode()
    # the run directory's lock is the first thing a run writes
    assert f"no space left on {disk} (tmpfs) while writing run.lock" in text
    assert "Traceback" not in text
    assert sorted(p.name for p in run_dir.iterdir()) == ["events.jsonl"]
    assert (run_dir / "events.jsonl").read_bytes() == torn  # nothing half-appended


def test_a_read_only_run_directory_is_refused_before_any_stage(tmp_path, small_disk):
    disk = small_disk(2**20, read_only=True)
    result = cli("--preset", str(preset_file(tmp_path)), "--run-dir", str(disk / "run"))
    assert result.returncode == 2
    assert one_line_error(result) == (f"error: run directory {disk / 'run'}: on a read-only "
                                      f"filesystem {disk} (tmpfs) (give a directory on a "
                                      "writable disk)")


def test_the_events_file_never_keeps_a_torn_line(tmp_path, monkeypatch):
    # fault injection at the write call (works without root): the disk takes 10 bytes of a line,
    # then refuses the rest
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"event": "Notice", "text": "whole"}\n{"event": "Notice", "te')  # torn
    writer = ev.JsonlWriter(path)
    writer(ev.RunStarted(run_dir=str(tmp_path), preset="tiny", stages=["data"]))
    real_write, calls = os.write, []

    def write_then_fill(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, data[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ev.os, "write", write_then_fill)
    with pytest.raises(ev.EngineError, match="no space left on .* while writing events.jsonl"):
        writer(ev.Notice(text="lost"))
    writer(ev.Notice(text="dropped after the failure"))  # no second error, nothing written
    monkeypatch.setattr(ev.os, "write", real_write)
    writer.close()
    data = path.read_bytes()
    assert data.endswith(b"\n") and b"lost" not in data and b"dropped" not in data
    read = list(read_events(path))
    assert [type(e).__name__ for e in read] == ["Notice", "RunStarted"]  # torn line skipped


def test_a_new_run_after_a_torn_line_starts_a_line_of_its_own(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "events.jsonl").write_bytes(b'{"event": "BatchProgress", "epo')  # a killed run
    status = run(tiny_config(), run_dir, lambda e: None, RunControl(), until="data")
    assert status == "finished"
    read = list(read_events(run_dir / "events.jsonl"))
    assert type(read[0]).__name__ == "RunStarted" and read[0].run_dir == str(run_dir)


# --- bad input: refused before any stage, nothing changed -----------------------------------


def test_a_run_directory_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "not-a-dir"
    target.write_text("keep me\n")
    result = cli("--preset", str(preset_file(tmp_path)), "--run-dir", str(target))
    assert result.returncode == 2
    assert one_line_error(result) == (f"error: run directory {target}: is a file, not a "
                                      "directory (give a directory; a missing one is created)")
    assert target.read_text() == "keep me\n"


def test_a_bad_set_value_blames_the_set_not_the_preset(tmp_path):
    result = cli("--preset", "sample", "--set", "training.epochs=-1", "--run-dir",
                 str(tmp_path / "run"))
    assert result.returncode == 2
    assert one_line_error(result) == ("error: --set training.epochs=-1: [training] epochs = -1: "
                                      "must be >= 1")
    assert not (tmp_path / "run").exists()


def test_a_missing_resume_file_fails_before_any_stage(tmp_path):
    run_dir = tmp_path / "run"
    result = cli("--preset", str(preset_file(tmp_path)), "--run-dir", str(run_dir),
                 "--resume", str(tmp_path / "nope.pt"))
    assert result.returncode == 2
    assert str(tmp_path / "nope.pt") in one_line_error(result)
    assert not run_dir.exists()  # no data, no tokenizer, no events: nothing ran
    result = cli("--preset", str(preset_file(tmp_path)), "--run-dir", str(run_dir),
                 "--resume", "last")
    assert result.returncode == 2 and "no checkpoint_last.pt" in one_line_error(result)
    assert not run_dir.exists()


def test_a_failed_resume_rewrites_neither_config_nor_tokenizer(tmp_path, trained):
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    before = fingerprint(run_dir)
    preset = preset_file(tmp_path, tokenizer__vocab_size=400, training__keep_last=0,
                         data__test_size=20)
    result = cli("--preset", str(preset), "--run-dir", str(run_dir), "--resume", "last")
    assert result.returncode == 2
    assert ("the checkpoint was trained with tokenizer.vocab_size = 300, this run has 400"
            in one_line_error(result))
    assert fingerprint(run_dir) == before  # config.toml, tokenizer.json, events.jsonl, ...


def test_a_tokenizer_path_of_another_size_is_refused(tmp_path, trained):
    given = trained / "tokenizer.json"
    size = ckpt.load_checkpoint(trained / ckpt.LAST)["vocab"]["src_size"]
    preset = preset_file(tmp_path, tokenizer__path=str(given), tokenizer__vocab_size=size + 7)
    result = cli("--preset", str(preset), "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2
    message = one_line_error(result)
    assert f"[tokenizer] path = '{given}': this tokenizer has {size:,} tokens but" in message
    assert f"vocab_size = {size + 7:,}" in message
    assert not (tmp_path / "run").exists()


def test_a_random_bytes_checkpoint_is_named_as_not_one(tmp_path):
    noise = tmp_path / "noise.pt"
    noise.write_bytes(os.urandom(10_000))
    result = cli("translate", "--checkpoint", str(noise), "hello")
    assert result.returncode == 2
    assert one_line_error(result) == (f"error: {noise}: not a transformer-tui checkpoint or "
                                      "damaged (not a PyTorch zip file)")


def test_translate_reports_a_line_that_is_not_utf8_and_goes_on(trained):
    lines = b"A man walks.\n" + b"caf\xe9 au lait\n" + b"A dog runs.\n"
    result = cli("translate", "--checkpoint", str(trained / ckpt.LAST), "--beam", "1",
                 stdin=lines)
    assert result.returncode == 2  # bad input was given, though the rest was translated
    out = result.stdout.decode().split("\n")
    assert len(out) == 4 and out[0] and out[1] == "" and out[2] and out[3] == ""
    assert result.stderr.decode() == ("error: stdin line 2: not UTF-8 (byte 0xe9 at position "
                                      "4); skipped, an empty line printed in its place "
                                      "(translate takes UTF-8 text)\n")


def test_translate_says_when_a_line_is_longer_than_the_model_reads(trained):
    long_line = " ".join(["A man walks."] * 200) + "\n"
    result = cli("translate", "--checkpoint", str(trained / ckpt.LAST), "--beam", "1",
                 stdin=("A dog runs.\n" + long_line).encode())
    assert result.returncode == 0
    err = result.stderr.decode()
    assert err.startswith("warning: line 2: ") and err.count("\n") == 1
    assert "more than this model reads (model.max_len = 48); only its first 47 tokens" in err
    assert len(result.stdout.decode().splitlines()) == 2


def test_evaluate_and_average_check_out_before_any_work(tmp_path, trained):
    missing = tmp_path / "no" / "such" / "dir" / "out.txt"
    # the checkpoint is bogus too: the --out check comes first, before anything is loaded
    result = cli("evaluate", "--checkpoint", str(tmp_path / "bogus.pt"), "--src",
                 str(tmp_path / "src.txt"), "--ref", str(tmp_path / "ref.txt"), "--out",
                 str(missing))
    assert result.returncode == 2
    assert one_line_error(result) == (f"error: --out {missing}: directory {missing.parent} does "
                                      "not exist (create it, or give a path in an existing "
                                      "directory)")
    result = cli("average", "--out", str(missing), "--last", "2", str(trained))
    assert result.returncode == 2 and f"directory {missing.parent} does not" in one_line_error(
        result)
    assert not (tmp_path / "no").exists()


def test_average_refuses_checkpoints_of_two_runs(tmp_path, trained):
    other = tmp_path / "other"
    status, _ = train_run(other, tiny_config(training__epochs=1, training__keep_last=0,
                                             data__test_size=20))
    assert status == "finished"
    ours, theirs = trained / "model_epoch_1.pt", other / "model_epoch_1.pt"
    before = fingerprint(tmp_path)
    result = cli("average", "--out", str(tmp_path / "avg.pt"), str(ours), str(theirs))
    assert result.returncode == 2
    message = one_line_error(result)
    assert f"{theirs}: from another run than {ours}" in message
    assert fingerprint(tmp_path) == before and not (tmp_path / "avg.pt").exists()
    # two checkpoints of one run average fine
    result = cli("average", "--out", str(tmp_path / "avg.pt"), "--last", "2", str(trained))
    assert result.returncode == 0, result.stderr.decode()


def test_a_full_disk_in_any_stage_is_one_line_naming_the_file(tmp_path, small_disk):
    disk = small_disk(4 * 2**20)
    fill_disk(disk, leave=40 * 1024)  # room for some of the run's files, not all of them
    result = cli("--preset", str(preset_file(tmp_path)), "--run-dir", str(disk / "run"))
    assert result.returncode == 1
    out = result.stdout.decode()
    # whichever stage meets the full disk (the corpus files, the tokenizer, the encoded ids)
    # names the file it was writing
    failed = re.search(r"FAILED in stage (\w+): no space left on (\S+) \(tmpfs\) while writing "
                       r"(\S+)", out)
    assert failed and failed[2] == str(disk) and failed[1] in ("data", "tokenizer", "encode"), out
    assert failed[3].startswith(("train", "valid", "test", "tokenizer")), out
    assert "Traceback" not in out + result.stderr.decode()


def test_nan_updates_stop_the_run_even_when_not_in_a_row(tmp_path):
    """training.max_bad_batches counts NaN/inf updates among the last 100, in a row or not (a
    run that was NaN every other update went on for an epoch); good updates between them do
    not reset the count, and an out-of-memory error still counts in a row only."""
    from engine.train.guard import NAN_WINDOW, DivergenceGuard
    from engine.train.state import NoamSchedule, TrainingState

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters())
    state = TrainingState(model, optimizer, NoamSchedule(optimizer, 32, 30, 1.0), None,
                          torch.device("cpu"), "fp32", None)
    events = []
    guard = DivergenceGuard(tiny_config(training__max_bad_batches=3), state, tmp_path,
                            events.append)
    for batch in range(1, 5):
        guard.bad_batch("oom", 1, batch, 100)  # out of memory: never 3 in a row here
        guard.good_update(4.0)
    guard.bad_batch("nan", 1, 10, 100)
    guard.good_update(4.0)
    guard.bad_batch("nan", 1, 12, 100)
    for _ in range(NAN_WINDOW - 2):
        guard.good_update(4.0)
    guard.bad_batch("nan", 1, 200, 100)  # batch 10's has left the window: 2 in it
    guard.good_update(4.0)
    guard.bad_batch("nan", 1, 202, 100)  # batch 12's has left too: 2
    guard.good_update(4.0)
    with pytest.raises(Exception) as stopped:
        guard.bad_batch("nan", 1, 204, 100)  # 200, 202, 204
    message = str(stopped.value)
    assert message.startswith("training stopped: loss or gradients were NaN/inf in 3 of the "
                              f"last {NAN_WINDOW} updates (epoch 1, batch 204); no checkpoint")
    assert [e.in_a_row for e in of(events, ev.BatchSkipped)] == [1] * 9
