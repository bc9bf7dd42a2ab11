"""A run is a process you can leave, find again and steer from any terminal (issue 11).

Every run here is a real `transformer-train` child process on the sample preset shrunk to
seconds; it is steered by the real `transformer-train status|pause|resume|stop` commands, and
stopped by real signals (SIGTERM, SIGKILL, and SIGHUP from a pseudo-terminal that is closed).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from engine import previous, runs
from engine.runs import RunState

TINY = ["data.train_size=400", "data.valid_size=20", "data.test_size=10",
        "tokenizer.vocab_size=200", "tokenizer.min_frequency=1",
        "model.d_model=32", "model.ffn_hidden=64", "model.n_head=2", "model.n_layers=1",
        "model.dropout=0.0", "training.max_tokens=300", "training.precision=\"fp32\"",
        "training.device=\"cpu\"", "training.checkpoint_every=1", "eval.bleu_every=0"]
FOREVER = "training.epochs=500"  # a run that only ends when told to


def train_argv(run_dir: Path, *extra: str, epochs: str = FOREVER) -> list[str]:
    sets = [arg for item in TINY + [epochs] for arg in ("--set", item)]
    return ["--preset", "sample", "--run-dir", str(run_dir), *sets, *extra]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1",
            "HF_HUB_OFFLINE": "1"}


def cli(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True,
                          text=True, env=env(), cwd=cwd, timeout=timeout)


def start(run_dir: Path, *extra: str, epochs: str = FOREVER, **popen) -> subprocess.Popen:
    popen.setdefault("stdout", subprocess.DEVNULL)
    popen.setdefault("stderr", subprocess.DEVNULL)
    return subprocess.Popen([sys.executable, "-m", "engine", *train_argv(run_dir, *extra,
                                                                          epochs=epochs)],
                            env=env(), **popen)


def events(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def batches(run_dir: Path) -> list[dict]:
    return [e for e in events(run_dir) if e["event"] == "BatchProgress"]


def wait_for(what, timeout: float = 120, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the run ended (exit {process.returncode}) while waiting")
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


def training(run_dir: Path, process: subprocess.Popen, at_least: int = 1) -> None:
    """Wait until the run has reported ``at_least`` batches."""
    wait_for(lambda: len(batches(run_dir)) >= at_least, process=process)


def ends(process: subprocess.Popen, timeout: float = 60) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def checkpoint_hashes(run_dir: Path) -> dict[str, str]:
    return {p.name: sha256(p) for p in sorted(run_dir.glob("*.pt"))}


def assert_stopped_with_a_checkpoint(run_dir: Path) -> None:
    """The run ended stopped, and checkpoint_last.pt holds its last update."""
    import torch

    told = events(run_dir)
    assert not [e for e in told if e["event"] == "RunFailed"], told[-1]
    assert told[-1]["event"] == "RunFinished" and told[-1]["status"] == "stopped"
    last = torch.load(run_dir / "checkpoint_last.pt", weights_only=True)
    # progress is reported 4 times a second: the last report may be a few updates back
    assert last["step"] >= batches(run_dir)[-1]["step"]
    saved = [e for e in told if e["event"] == "CheckpointSaved" and e["name"] == "checkpoint_last.pt"]
    assert saved[-1]["step"] == last["step"]


@pytest.fixture
def reaper():
    """Processes a test started: killed if the test failed before they ended."""
    started: list[subprocess.Popen] = []
    yield started.append
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


# --- steering a headless run from another terminal -----------------------------------------


def test_pause_resume_and_stop_a_headless_run_from_another_terminal(tmp_path, reaper):
    run_dir = tmp_path / "run"
    process = start(run_dir)
    reaper(process)
    training(run_dir, process)

    status = cli("status", str(run_dir))
    assert status.returncode == 3, status.stderr  # live
    assert status.stdout.count("\n") == 1
    assert f"running  pid {process.pid}" in status.stdout and "preset sample" in status.stdout

    paused = cli("pause", str(run_dir))
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.startswith(f"{run_dir}: paused (pid {process.pid}")
    time.sleep(1.0)  # a batch under way when the request came may still report
    seen = len(batches(run_dir))
    time.sleep(5.0)
    assert len(batches(run_dir)) == seen, "batches went on while paused"
    assert runs.summarize(run_dir).state == RunState.PAUSED
    paused_status = cli("status", str(run_dir))
    assert "paused" in paused_status.stdout and paused_status.returncode == 3

    resumed = cli("resume", str(run_dir))
    assert resumed.returncode == 0 and "resumed" in resumed.stdout
    wait_for(lambda: len(batches(run_dir)) > seen + 2, process=process)

    stopped = cli("stop", str(run_dir))
    assert stopped.returncode == 0 and "stopping" in stopped.stdout
    assert ends(process) == 0
    assert_stopped_with_a_checkpoint(run_dir)
    assert not (run_dir / runs.LOCK).exists()

    # afterwards: one line each, non-zero, saying why
    status = cli("status", str(run_dir))
    assert status.returncode == 4 and "  stopped  " in status.stdout
    again = cli("pause", str(run_dir))
    assert again.returncode != 0
    assert again.stderr.strip() == f"error: no live run in {run_dir} (the run there is stopped)"


def test_status_without_a_directory_lists_every_run_under_saved(tmp_path, reaper):
    finished = tmp_path / "saved" / "done"
    done = cli(*train_argv(finished, epochs="training.epochs=1"), cwd=tmp_path, timeout=180)
    assert done.returncode == 0, done.stderr
    live = tmp_path / "saved" / "live"
    process = start(live, cwd=tmp_path)
    reaper(process)
    training(live, process)

    status = cli("status", cwd=tmp_path)
    assert status.returncode == 0
    lines = status.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("saved/live  running") and lines[1].startswith("saved/done  finished")
    assert "epoch 1/1" in lines[1] and "val loss" in lines[1]
    assert cli("stop", str(live)).returncode == 0
    assert ends(process) == 0


# --- live or dead, never guessed -----------------------------------------------------------


def test_a_run_killed_with_sigkill_is_dead_and_the_next_run_takes_its_lock_over(tmp_path, reaper):
    run_dir = tmp_path / "run"
    process = start(run_dir)
    reaper(process)
    wait_for(lambda: any(e["event"] == "CheckpointSaved" for e in events(run_dir)),
             process=process)
    process.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    process.wait()

    wait_for(lambda: runs.summarize(run_dir).state == RunState.DEAD, timeout=30)
    assert time.monotonic() - killed < 30
    summary = runs.summarize(run_dir)
    assert summary.last_checkpoint is not None and summary.pid == process.pid
    assert (run_dir / runs.LOCK).exists()  # left behind by the killed process
    line = cli("status", str(run_dir))
    assert line.returncode == 5 and "  dead  " in line.stdout and "--resume last" in line.stdout
    refused = cli("stop", str(run_dir))
    assert refused.returncode != 0 and "dead" in refused.stderr

    # the stale lock does not block the resumed run
    resumed = start(run_dir, "--resume", "last")
    reaper(resumed)
    wait_for(lambda: runs.summarize(run_dir).state == RunState.RUNNING, process=resumed)
    assert runs.summarize(run_dir).pid == resumed.pid
    assert cli("stop", str(run_dir)).returncode == 0
    assert ends(resumed) == 0


def test_a_live_run_without_batches_for_ten_median_batch_times_is_stalled(tmp_path):
    # a live process (this one) owns the directory; its last batch came 40 s ago, at 0.1 s a batch
    run_dir = tmp_path / "run"
    lock = runs.RunLock.acquire(run_dir)
    try:
        runs.write_heartbeat(run_dir, stage="train", step=7, paused=False, control_seq=0)
        now = time.time()
        lines = [{"event": "RunStarted", "run_dir": str(run_dir), "preset": "sample",
                  "stages": ["train"], "time": now - 60}]
        for i in range(5):
            lines.append({"event": "BatchProgress", "epoch": 1, "epochs": 3, "batch": i + 1,
                          "batches": 100, "step": i + 1, "loss": 5.0, "avg_loss": 5.0,
                          "lr": 1e-3, "batches_per_second": 10.0, "tokens_per_second": 1.0,
                          "eta": 1.0, "elapsed": 1.0, "time": now - 45 + i})
        (run_dir / "events.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        assert runs.summarize(run_dir).state == RunState.STALLED
        # a batch now: running again
        lines[-1]["time"] = time.time()
        with open(run_dir / "events.jsonl", "a") as f:
            f.write(json.dumps(lines[-1]) + "\n")
        assert runs.summarize(run_dir).state == RunState.RUNNING
    finally:
        lock.release()
    assert runs.summarize(run_dir).state == RunState.DEAD  # no end event, no process


# --- one run per directory, nothing overwritten ---------------------------------------------


def test_a_second_run_on_a_locked_directory_refuses_and_changes_nothing(tmp_path, reaper):
    run_dir = tmp_path / "run"
    first = start(run_dir)
    reaper(first)
    wait_for(lambda: (run_dir / "checkpoint_best.pt").exists(), process=first)
    assert cli("pause", str(run_dir)).returncode == 0  # its files hold still while we look
    time.sleep(1.0)
    before = checkpoint_hashes(run_dir)
    history = (run_dir / "events.jsonl").read_bytes()

    second = cli(*train_argv(run_dir, "--set", "training.seed=9"))
    assert second.returncode == 2
    assert second.stderr.count("\n") == 1
    assert f"in use by a live run (pid {first.pid}" in second.stderr
    assert checkpoint_hashes(run_dir) == before
    assert (run_dir / "events.jsonl").read_bytes() == history
    assert json.loads((run_dir / runs.LOCK).read_text())["pid"] == first.pid

    assert cli("stop", str(run_dir)).returncode == 0
    assert ends(first) == 0


def test_starting_where_a_finished_run_lives_refuses_or_moves_it_aside_with_fresh(tmp_path):
    run_dir = tmp_path / "run"
    done = cli(*train_argv(run_dir, epochs="training.epochs=1"), timeout=180)
    assert done.returncode == 0, done.stderr
    best = sha256(run_dir / "checkpoint_best.pt")
    files = sorted(p.name for p in run_dir.iterdir())

    refused = cli(*train_argv(run_dir, epochs="training.epochs=2"))
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1
    assert "holds an earlier run (finished, epoch 1/1" in refused.stderr
    assert "--resume last" in refused.stderr and "--fresh" in refused.stderr
    assert sha256(run_dir / "checkpoint_best.pt") == best
    assert sorted(p.name for p in run_dir.iterdir()) == files

    fresh = cli(*train_argv(run_dir, "--fresh", epochs="training.epochs=1"), timeout=180)
    assert fresh.returncode == 0, fresh.stderr
    (previous,) = (run_dir / runs.PREVIOUS).iterdir()
    assert sha256(previous / "checkpoint_best.pt") == best
    assert sorted(p.name for p in previous.iterdir()) == files
    # the new run reused the tokenizer and data the earlier one made, and has its own history
    started = [e for e in events(run_dir) if e["event"] == "RunStarted"]
    assert len(started) == 1
    reused = {e["stage"]: e["reused"] for e in events(run_dir) if e["event"] == "StageFinished"}
    assert reused["tokenizer"] and reused["encode"]
    assert [s.state for s in runs.list_runs(tmp_path) if s.run_dir == previous] == [
        RunState.FINISHED]


# --- signals ---------------------------------------------------------------------------------


def test_sigterm_stops_at_the_next_update_with_a_checkpoint(tmp_path, reaper):
    run_dir = tmp_path / "run"
    process = start(run_dir)
    reaper(process)
    training(run_dir, process, at_least=3)
    process.send_signal(signal.SIGTERM)
    assert ends(process) == 0
    assert_stopped_with_a_checkpoint(run_dir)


def test_closing_the_terminal_stops_the_run_with_a_checkpoint_instead_of_failing(tmp_path,
                                                                                   reaper):
    # the run's controlling terminal is a pseudo-terminal; closing its master side is what a
    # closed terminal window or a dropped SSH session does: SIGHUP, then EIO on every write
    master, slave = os.openpty()

    def own_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    run_dir = tmp_path / "run"
    process = start(run_dir, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                    preexec_fn=own_terminal)
    reaper(process)
    os.close(slave)
    output = bytearray()

    def read_terminal() -> bool:  # a terminal nobody reads would fill up and block the run
        import select

        while select.select([master], [], [], 0)[0]:
            output.extend(os.read(master, 65536))
        return len(batches(run_dir)) >= 3

    wait_for(read_terminal, process=process)
    assert output  # it was printing to the terminal
    os.close(master)  # the terminal goes away
    assert ends(process) == 0
    assert_stopped_with_a_checkpoint(run_dir)


def test_a_second_ctrl_c_while_stopping_aborts_at_once_and_says_so(tmp_path, reaper):
    run_dir = tmp_path / "run"
    process = start(run_dir)
    reaper(process)
    training(run_dir, process, at_least=3)
    process.send_signal(signal.SIGINT)
    time.sleep(0.02)  # two separate signals, not one
    process.send_signal(signal.SIGINT)
    assert ends(process) == 130
    told = events(run_dir)
    # the engine thread may add a last progress line in the moment before the process ends
    (failed,) = [e for e in told if e["event"] == "RunFailed"]
    assert failed["message"].startswith("aborted by a second Ctrl-C")
    assert not [e for e in told if e["event"] == "RunFinished"]
    assert not (run_dir / runs.LOCK).exists()
    assert runs.summarize(run_dir).state == RunState.FAILED


def test_nohup_keeps_a_run_going_when_the_terminal_hangs_up(tmp_path, reaper):
    run_dir = tmp_path / "run"
    process = start(run_dir, preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    reaper(process)
    training(run_dir, process)
    process.send_signal(signal.SIGHUP)
    seen = len(batches(run_dir))
    wait_for(lambda: len(batches(run_dir)) > seen + 2, process=process)
    assert cli("stop", str(run_dir)).returncode == 0
    assert ends(process) == 0


# --- torchrun: rank 0 owns the directory, every rank obeys ----------------------------------


def start_torchrun(run_dir: Path, **extra_env: str) -> subprocess.Popen:
    """A 2-process torchrun job (gloo, on the CPU) training the tiny config until stopped."""
    sets = [arg for item in TINY + [FOREVER] for arg in ("--set", item)]
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "engine", "--preset", "sample", "--run-dir", str(run_dir), *sets],
        env={**env(), **extra_env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_pause_resume_and_stop_reach_both_ranks_of_a_torchrun_job(tmp_path, reaper):
    import psutil

    run_dir = tmp_path / "job"
    # a training collective gives up after 5 s: a rank left behind by a pause would fail
    job = start_torchrun(run_dir, TRANSFORMER_DIST_TIMEOUT="5")
    reaper(job)
    training(run_dir, job, at_least=2)
    rank_1 = next(p for p in psutil.Process(job.pid).children()
                  if p.environ().get("RANK") == "1")

    status = cli("status", str(run_dir))
    assert status.returncode == 3 and "running" in status.stdout
    assert "2 processes" in status.stdout
    lock = json.loads((run_dir / runs.LOCK).read_text())
    assert lock["processes"] == 2 and lock["pid"] != rank_1.pid  # rank 0 holds it

    assert cli("pause", str(run_dir)).returncode == 0
    time.sleep(1.0)
    seen = len(batches(run_dir))
    busy_before = sum(rank_1.cpu_times()[:2])
    time.sleep(7.0)  # longer than a collective may wait
    assert len(batches(run_dir)) == seen
    assert sum(rank_1.cpu_times()[:2]) - busy_before < 1.0  # rank 1 is waiting, not training
    assert runs.summarize(run_dir).state == RunState.PAUSED

    assert cli("resume", str(run_dir)).returncode == 0
    wait_for(lambda: len(batches(run_dir)) > seen + 2, process=job)
    assert cli("stop", str(run_dir)).returncode == 0
    assert ends(job, timeout=90) == 0  # both ranks ended cleanly, at the same update

    assert_stopped_with_a_checkpoint(run_dir)
    import torch

    last = torch.load(run_dir / "checkpoint_last.pt", weights_only=True)
    assert last["world_size"] == 2 and len(last["rank_rng"]) == 2  # saved with both ranks there


def test_keep_last_deletes_only_periodic_checkpoints_this_run_wrote(tmp_path, one_thread):
    from engine.control import RunControl
    from engine.pipeline import run
    from tests.tiny_runs import tiny_config

    run_dir = tmp_path / "run"
    assert run(tiny_config(training__epochs=1), run_dir, lambda e: None, RunControl()) == "finished"
    # a file of another run that a newer epoch number would make look like ours
    (run_dir / "model_epoch_9.pt").write_bytes((run_dir / "model_epoch_1.pt").read_bytes())
    foreign = sha256(run_dir / "model_epoch_9.pt")
    assert run(tiny_config(training__epochs=3), run_dir, lambda e: None, RunControl(),
               resume="last") == "finished"
    # keep_last = 1: epochs 1 (written before the resume) and 2 went, 3 stays, 9 is not ours
    assert sorted(p.name for p in run_dir.glob("model_epoch_*.pt")) == [
        "model_epoch_3.pt", "model_epoch_9.pt"]
    assert sha256(run_dir / "model_epoch_9.pt") == foreign


def test_launch_detached_starts_a_run_in_its_own_session_logging_to_run_log(tmp_path):
    run_dir = tmp_path / "run"
    pid = runs.launch_detached(train_argv(run_dir), run_dir)
    try:
        wait_for(lambda: runs.summarize(run_dir).state == RunState.RUNNING)
        assert os.getsid(pid) == pid != os.getsid(0)  # no terminal of ours can hang it up
        assert runs.summarize(run_dir).pid == pid
        wait_for(lambda: len(batches(run_dir)) >= 1)
        # a second detached start on the busy directory refuses, in its run.log
        second = runs.launch_detached(train_argv(run_dir), run_dir)
        wait_for(lambda: f"in use by a live run (pid {pid}" in (run_dir / runs.LOG).read_text())
        wait_for(lambda: not runs.pid_alive(second))
        runs.wait_applied(run_dir, runs.send_control(run_dir, "stop"))
        wait_for(lambda: runs.summarize(run_dir).state == RunState.STOPPED, timeout=60)
        assert "Run stopped" in (run_dir / runs.LOG).read_text()
    finally:
        if runs.pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_sigterm_to_torchrun_stops_every_rank_with_a_checkpoint(tmp_path, reaper):
    # a batch scheduler ending the job: torchrun passes the signal on to each rank
    run_dir = tmp_path / "job"
    job = start_torchrun(run_dir)
    reaper(job)
    training(run_dir, job, at_least=2)
    job.send_signal(signal.SIGTERM)
    ends(job, timeout=60)  # torchrun itself reports the signal as a failure of its own
    assert_stopped_with_a_checkpoint(run_dir)
    assert not (run_dir / runs.LOCK).exists()


# --- unit pieces -------------------------------------------------------------------------------


def test_a_directory_with_only_a_tokenizer_and_data_holds_no_earlier_run(tmp_path):
    run_dir = tmp_path / "run"
    prepared = cli("--preset", "sample", "--run-dir", str(run_dir), "--until", "encode",
                   *[arg for item in TINY for arg in ("--set", item)], timeout=180)
    assert prepared.returncode == 0, prepared.stderr
    assert previous.earlier_run(run_dir) is None  # a training start here reuses them
    assert runs.summarize(run_dir).state == RunState.FINISHED


def test_control_requests_need_a_live_run(tmp_path):
    with pytest.raises(runs.EngineError, match="no live run in .* \\(no run there\\)"):
        runs.send_control(tmp_path, "pause")
    with pytest.raises(runs.EngineError, match="unknown command"):
        runs.send_control(tmp_path, "halt")
    assert runs.summarize(tmp_path).state == RunState.NEW
