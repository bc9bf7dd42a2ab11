"""Alerts (engine/alerts.py): raised by real tiny runs, delivered to a real shell command, the
stall watchdog on a fake clock and in the run process's main thread, `python -m engine` with
no app, and the app's toast, bell and terminal notification."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine.alerts import Alerts, Notifier, StallWatchdog
from engine.config import NotifyConfig
from engine.control import RunControl
from engine.events import (
    Alert,
    BatchProgress,
    BatchSkipped,
    EpochSummary,
    MemorySample,
    Notice,
    RunFinished,
)
from tests.tiny_runs import TINY, tiny_config, train_run


def alerts_of(events) -> list[Alert]:
    return [e for e in events if isinstance(e, Alert)]


def warnings_of(events) -> list[Notice]:
    return [e for e in events if isinstance(e, Notice) and e.level == "warning"]


def attached(tmp_path: Path, **notify) -> tuple[Alerts, list]:
    """Alerts for a run in tmp_path/run whose events go to a list (as the pipeline hooks them)."""
    events: list = []
    alerts = Alerts(NotifyConfig(**notify), tmp_path / "run")

    def emit(event):
        alerts.see(event)
        events.append(event)

    alerts.attach(emit)
    return alerts, events


def read_json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- the [notify] section -------------------------------------------------------------------


def test_notify_keys_are_typed_checked_and_kept_in_the_runs_config_toml(tmp_path):
    from engine.config import ConfigError, describe_keys, load_config

    config = load_config("sample", ["notify.command=curl -s -d @- https://example.org/hook",
                                    "notify.stall_minutes=5", "notify.target_bleu=25"])
    assert config.notify == NotifyConfig(command="curl -s -d @- https://example.org/hook",
                                         stall_minutes=5.0, target_bleu=25.0)
    (tmp_path / "config.toml").write_text(config.to_toml())
    assert load_config(str(tmp_path / "config.toml")).notify == config.notify
    assert "[notify]" in describe_keys() and "timeout_seconds" in describe_keys()
    for item, words in [("notify.timeout_seconds=0", "between 1.0 and 3600.0"),
                        ("notify.oom_skips=-1", ">= 0"),
                        ("notify.target_bleu=101", "between 0.0 and 100.0"),
                        ("notify.comand=x", "did you mean 'command'")]:
        with pytest.raises(ConfigError) as error:
            load_config("sample", [item])
        assert item in str(error.value) and words in str(error.value)
        assert "\n" not in str(error.value)


def test_a_bad_notify_value_is_exit_2_with_one_line_and_nothing_on_disk(tmp_path):
    result = subprocess.run([sys.executable, "-m", "engine", "--set", "notify.stall_minutes=-1"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --set notify.stall_minutes=-1: [notify] stall_minutes = -1: must be >= 0.0"]
    assert list(tmp_path.iterdir()) == []


# --- delivery to the notify command ----------------------------------------------------------


def test_a_command_gets_the_alert_as_json_on_stdin_and_as_environment_variables(tmp_path):
    got, env = tmp_path / "got.jsonl", tmp_path / "env.txt"
    command = (f'cat >> {got}; printf "%s|%s|%s|%s\\n" "$TT_ALERT_KIND" "$TT_ALERT_TEXT" '
               f'"$TT_RUN_DIR" "$TT_RUN" >> {env}')
    alerts, events = attached(tmp_path, command=command, timeout_seconds=20)
    alerts.raise_alert("target", "run x reached validation loss 2.0")
    alerts.raise_alert("finished", "run x finished: test BLEU 27.1")
    alerts.close()
    delivered = read_json_lines(got)
    assert [d["kind"] for d in delivered] == ["target", "finished"]
    assert delivered[1]["text"] == "run x finished: test BLEU 27.1"
    assert delivered[1]["run_dir"] == str(tmp_path / "run") and delivered[1]["run"] == "run"
    assert delivered[1]["pid"] == os.getpid() and delivered[1]["host"]
    assert abs(delivered[1]["time"] - time.time()) < 60
    assert env.read_text().splitlines()[1] == (
        f"finished|run x finished: test BLEU 27.1|{tmp_path / 'run'}|run")
    assert alerts.notifier.delivered == 2 and warnings_of(events) == []


def test_a_failing_command_is_one_warning_notice_and_no_exception(tmp_path):
    alerts, events = attached(tmp_path, command="echo 'webhook said 403' >&2; exit 1")
    alerts.raise_alert("failed", "run x failed")
    alerts.close()
    [warning] = warnings_of(events)
    assert "exited with status 1 for the failed alert: webhook said 403" in warning.text
    assert alerts_of(events) == [Alert(kind="failed", text="run x failed")]


def test_a_hanging_command_is_killed_at_its_timeout_without_holding_up_the_caller(tmp_path):
    pid_file = tmp_path / "pid"
    alerts, events = attached(tmp_path, command=f"echo $$ > {pid_file}; sleep 60",
                              timeout_seconds=1)
    began = time.monotonic()
    alerts.raise_alert("stalled", "run x stalled")
    assert time.monotonic() - began < 0.5  # raising never waits for the command
    alerts.close()  # waits for the queue, up to the timeout (+1 s)
    assert time.monotonic() - began < 5
    [warning] = warnings_of(events)
    assert "timed out after 1 s (killed)" in warning.text and "stalled" in warning.text
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # its whole process group was killed and reaped
        os.kill(pid, 0)


def test_a_full_queue_drops_the_alert_with_a_warning_instead_of_blocking(tmp_path):
    warned: list[str] = []
    notifier = Notifier("sleep 5", 1.0, tmp_path, warned.append)
    began = time.monotonic()
    for i in range(40):
        notifier.deliver(Alert(kind="oom", text=f"alert {i}"))
    assert time.monotonic() - began < 0.5
    assert any("dropped" in text for text in warned)
    notifier.close(0.5)  # gives up waiting: kills the running command, says so
    assert "killed" in warned[-1] and "not delivered" in warned[-1]


# --- what raises alerts ----------------------------------------------------------------------


def test_oom_skips_alert_at_the_threshold_then_at_twice_as_many(tmp_path):
    alerts, events = attached(tmp_path, oom_skips=3)
    for batch in range(1, 8):
        alerts.see(BatchSkipped(reason="oom", epoch=1, batch=batch, tokens=4096, in_a_row=1))
        alerts.see(BatchSkipped(reason="nan", epoch=1, batch=batch, tokens=4096, in_a_row=1))
    oom = alerts_of(events)
    assert [a.kind for a in oom] == ["oom", "oom"]
    assert "skipped 3 batches for out of memory" in oom[0].text and "batch 3" in oom[0].text
    assert "skipped 6 batches" in oom[1].text


def test_targets_alert_once_each_and_not_when_off(tmp_path):
    def summary(step, val_loss, bleu):
        return EpochSummary(epoch=step, epochs=9, step=step, train_loss=3.0, train_ppl=20.0,
                            val_loss=val_loss, val_ppl=1.0, bleu=bleu, epoch_seconds=1.0,
                            total_seconds=1.0)

    alerts, events = attached(tmp_path, target_bleu=25.0, target_val_loss=2.0)
    for step, loss, bleu in [(1, 3.0, 20.0), (2, 1.9, 25.5), (3, 1.8, 26.0)]:
        alerts.see(summary(step, loss, bleu))
    texts = [a.text for a in alerts_of(events)]
    assert texts == [f"run {tmp_path / 'run'} reached validation BLEU 25.50 (target 25) at step 2",
                     f"run {tmp_path / 'run'} reached validation loss 1.9000 (target 2) at step 2"]
    off, off_events = attached(tmp_path)
    off.see(summary(1, 0.1, 99.0))
    assert alerts_of(off_events) == []


def test_a_finished_tiny_run_alerts_with_its_test_bleu_before_its_end_event(tmp_path):
    got = tmp_path / "got.jsonl"
    config = tiny_config(training__epochs=1, notify__command=f"cat >> {got}",
                         notify__target_val_loss=100.0)
    status, events = train_run(tmp_path / "run", config)
    assert status == "finished"
    kinds = [a.kind for a in alerts_of(events)]
    assert kinds == ["target", "finished"]
    assert isinstance(events[-1], RunFinished) and events[-2] == alerts_of(events)[-1]
    assert alerts_of(events)[-1].text.startswith(f"run {tmp_path / 'run'} finished: test BLEU ")
    assert [d["kind"] for d in read_json_lines(got)] == ["target", "finished"]  # delivered
    written = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").open()]
    assert [e["kind"] for e in written if e["event"] == "Alert"] == ["target", "finished"]


def test_a_stopped_tiny_run_alerts_stopped(tmp_path):
    control = RunControl()

    def stop_at_once(event):
        if isinstance(event, BatchProgress):
            control.stop()

    status, events = train_run(tmp_path / "run", tiny_config(), control, on_event=stop_at_once)
    assert status == "stopped"
    [alert] = alerts_of(events)
    assert alert.kind == "stopped" and "stopped at step" in alert.text


def test_a_tiny_run_failing_on_bad_input_alerts_failed(tmp_path):
    for name, lines in [("train.en", 5), ("train.de", 4), ("valid.en", 2), ("valid.de", 2)]:
        (tmp_path / name).write_text("".join(f"word {i}\n" for i in range(lines)))
    config = tiny_config(data__source="local", data__train_src=str(tmp_path / "train.en"),
                         data__train_tgt=str(tmp_path / "train.de"),
                         data__valid_src=str(tmp_path / "valid.en"),
                         data__valid_tgt=str(tmp_path / "valid.de"))
    status, events = train_run(tmp_path / "run", config)
    assert status == "failed"
    [alert] = alerts_of(events)
    assert alert.kind == "failed" and "failed in stage data" in alert.text
    assert "has 5 lines but" in alert.text


def test_a_tiny_run_with_a_huge_learning_rate_alerts_diverged(tmp_path):
    config = tiny_config(training__epochs=4, training__lr_factor=1e4,
                         training__divergence_factor=1.5)
    status, events = train_run(tmp_path / "run", config)
    assert status == "failed"
    [alert] = alerts_of(events)
    assert alert.kind == "diverged", alert.text
    assert "diverged in stage train" in alert.text


def test_a_hanging_command_does_not_hold_up_training(tmp_path):
    """The target alert's command hangs past its timeout while the run trains on; the finished
    alert is still delivered before the run returns."""
    got = tmp_path / "got.jsonl"
    command = f'[ "$TT_ALERT_KIND" = target ] && sleep 60; cat >> {got}'
    config = tiny_config(training__epochs=2, notify__command=command,
                         notify__timeout_seconds=3.0, notify__target_val_loss=100.0)
    seen: list[tuple[float, object]] = []
    status, events = train_run(tmp_path / "run", config,
                               on_event=lambda e: seen.append((time.monotonic(), e)))
    assert status == "finished"
    alert_at = next(t for t, e in seen if isinstance(e, Alert) and e.kind == "target")
    timed_out_at = next(t for t, e in seen if isinstance(e, Notice) and "timed out" in e.text)
    # training went on while the command hung: progress came between the alert and its kill
    assert any(alert_at < t < timed_out_at for t, e in seen if isinstance(e, BatchProgress))
    assert [d["kind"] for d in read_json_lines(got)] == ["finished"]
    assert len(warnings_of(events)) == 1


# --- stalls ----------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def progress(step: int) -> BatchProgress:
    return BatchProgress(epoch=1, epochs=1, batch=step, batches=99, step=step, loss=3.0,
                         avg_loss=3.0, lr=1e-3, batches_per_second=1.0, tokens_per_second=1.0,
                         eta=1.0, elapsed=1.0)


def test_the_watchdog_alerts_once_per_stall_and_never_for_paused_time():
    clock = FakeClock()
    watchdog = StallWatchdog(minutes=1, clock=clock)
    watchdog.saw(progress(1))
    clock.now += 59
    assert watchdog.check(paused=False) is None
    watchdog.saw(MemorySample(devices=[], torch_allocated=None, torch_reserved=None,
                              torch_peak=None, process_rss=1, system_used=1, system_total=2,
                              max_tokens=1))  # a memory reading is no progress
    clock.now += 2
    assert watchdog.check(paused=False) == 61
    clock.now += 600
    assert watchdog.check(paused=False) is None  # one alert per stall
    watchdog.saw(progress(2))  # progress ends the stall
    clock.now += 3600
    assert watchdog.check(paused=True) is None  # an hour paused
    clock.now += 30
    assert watchdog.check(paused=False) is None  # ... counts for nothing
    clock.now += 31
    assert watchdog.check(paused=False) == 61
    assert StallWatchdog(minutes=0, clock=clock).check(paused=False) is None  # 0 = off


def test_the_run_process_main_thread_raises_one_stalled_alert_and_none_while_paused(tmp_path):
    from engine import cli, runs

    clock = FakeClock()
    alerts = Alerts(NotifyConfig(stall_minutes=1), tmp_path, clock=clock)
    events: list = []
    alerts.attach(lambda e: (alerts.see(e), events.append(e)))
    alerts.see(progress(7))
    done = threading.Event()
    engine = threading.Thread(target=done.wait, daemon=True)  # an engine that makes no progress
    control = RunControl()
    fields = cli.HeartbeatFields()
    main = threading.Thread(target=cli.steer, args=(tmp_path, control, engine,
                                                    cli.StopSignals(lambda: None), fields, True,
                                                    alerts), daemon=True)
    engine.start()
    main.start()
    clock.now += 120
    deadline = time.monotonic() + 10
    while not alerts_of(events) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(3 * runs.POLL_SECONDS)
    [alert] = alerts_of(events)
    assert alert.kind == "stalled"
    assert alert.text == f"run {tmp_path} stalled: no progress for 2 min (stage -, step 7)"
    alerts.see(progress(8))
    control.pause()
    clock.now += 3600
    time.sleep(3 * runs.POLL_SECONDS)
    assert len(alerts_of(events)) == 1  # paused: no alert however long
    done.set()
    main.join(10)
    assert not main.is_alive()


# --- the run process with no app ---------------------------------------------------------


def test_python_m_engine_delivers_finished_and_failed_alerts_with_no_app(tmp_path):
    got = tmp_path / "alerts.jsonl"
    sets = [f"{section}.{key}={json.dumps(value)}" for section, values in TINY.items()
            for key, value in values.items()]
    sets += ["training.epochs=1", f"notify.command=cat >> {got}"]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}

    def train(run_dir: Path, *more: str) -> subprocess.CompletedProcess:
        args = [arg for item in [*sets, *more] for arg in ("--set", item)]
        return subprocess.run([sys.executable, "-m", "engine", "--run-dir", str(run_dir), *args],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    finished = train(tmp_path / "good")
    assert finished.returncode == 0, finished.stderr
    written = [json.loads(line) for line in (tmp_path / "good" / "events.jsonl").open()]
    assert [e["kind"] for e in written if e["event"] == "Alert"] == ["finished"]
    (tmp_path / "a.en").write_text("one\ntwo\n")
    (tmp_path / "a.de").write_text("eins\n")
    failed = train(tmp_path / "bad", "data.source=local", f"data.train_src={tmp_path / 'a.en'}",
                   f"data.train_tgt={tmp_path / 'a.de'}", f"data.valid_src={tmp_path / 'a.en'}",
                   f"data.valid_tgt={tmp_path / 'a.en'}")
    assert failed.returncode == 1, failed.stderr
    delivered = read_json_lines(got)
    assert [(d["kind"], d["run"]) for d in delivered] == [("finished", "good"), ("failed", "bad")]
    assert delivered[0]["text"].startswith(f"run {tmp_path / 'good'} finished: test BLEU ")
    assert "failed in stage data" in delivered[1]["text"]


# --- the app ---------------------------------------------------------------------------------


def test_a_terminal_notification_is_osc_9_and_777_with_no_control_characters_of_the_text():
    from tui.screens.dashboard import terminal_notification

    assert terminal_notification("transformer-tui", "run a finished: test BLEU 27.1") == (
        "\x1b]9;transformer-tui: run a finished: test BLEU 27.1\x07"
        "\x1b]777;notify;transformer-tui;run a finished: test BLEU 27.1\x07")
    sneaky = terminal_notification("t;x", "bad\x07\x1b]52;c;aGk=\x1b\\ end\n")
    assert sneaky == "\x1b]9;t,x: bad]52;c;aGk=\\ end\x07\x1b]777;notify;t,x;bad]52;c;aGk=\\ end\x07"


def test_the_app_toasts_rings_and_notifies_live_alerts_but_only_logs_replayed_ones(
        tmp_path, monkeypatch):
    import asyncio

    from tests.tui_runs import jsonl_line, write_finished_run
    from tui.app import TransformerApp

    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "demo"
    events_file = write_finished_run(run_dir)
    old = Alert(kind="finished", text="run saved/demo finished: test BLEU 28.0")
    with open(events_file, "a", encoding="utf-8") as f:
        f.write(jsonl_line(old, 1_700_000_000.0))  # raised long before this app looked

    async def story() -> None:
        app = TransformerApp(attach=run_dir)
        async with app.run_test(size=(120, 40)) as pilot:
            written: list[str] = []
            bells: list[None] = []
            monkeypatch.setattr(app._driver, "write", written.append)
            monkeypatch.setattr(app, "bell", lambda: bells.append(None))
            deadline = time.monotonic() + 10
            while not any("alert (finished)" in line for line in app.state.log):
                assert time.monotonic() < deadline, "the replayed alert never reached the log"
                await pilot.pause(0.05)
            await pilot.pause(0.3)
            assert list(app._notifications) == [] and bells == [] and written == []
            from engine.events import JsonlWriter

            writer = JsonlWriter(events_file)  # the run says something new
            writer(Alert(kind="stalled", text="run saved/demo stalled: no progress for 30 min"))
            writer.close()
            while not list(app._notifications):
                assert time.monotonic() < deadline + 10, "the live alert was never toasted"
                await pilot.pause(0.05)
            [toast] = list(app._notifications)
            assert toast.message == "run saved/demo stalled: no progress for 30 min"
            assert toast.title == "Alert: stalled" and toast.severity == "error"
            assert len(bells) == 1
            text = "run saved/demo stalled: no progress for 30 min"
            assert written == [f"\x1b]9;transformer-tui: {text}\x07"
                               f"\x1b]777;notify;transformer-tui;{text}\x07"]
            assert any(f"alert (stalled): {text}" in line for line in app.state.log)

    asyncio.run(story())


def test_the_run_list_shows_each_runs_last_alert(tmp_path, monkeypatch):
    import asyncio

    from textual.widgets import DataTable

    from tests.tui_runs import jsonl_line, write_finished_run
    from tui.app import TransformerApp
    from tui.screens.runs import RunsScreen

    monkeypatch.chdir(tmp_path)
    saved = tmp_path / "saved"
    write_finished_run(saved / "quiet")
    with open(write_finished_run(saved / "told"), "a", encoding="utf-8") as f:
        f.write(jsonl_line(Alert(kind="oom", text="run told skipped 10 batches"), 1.8e9))
        f.write(jsonl_line(Alert(kind="finished", text="run told finished: test BLEU 28.0"),
                           1.8e9 + 1))

    async def story() -> None:
        app = TransformerApp(show_runs=True, runs_dir=saved)
        async with app.run_test(size=(160, 24)) as pilot:
            deadline = time.monotonic() + 10
            while not (isinstance(app.screen, RunsScreen)
                       and app.screen.query_one(DataTable).row_count == 2):
                assert time.monotonic() < deadline
                await pilot.pause(0.05)
            table = app.screen.query_one(DataTable)
            keys = [table.coordinate_to_cell_key((i, 0)).row_key for i in range(2)]
            rows = {str(table.get_cell(key, "run")): str(table.get_cell(key, "last alert"))
                    for key in keys}
            assert rows == {"told": "run told finished: test BLEU 28.0", "quiet": "—"}

    asyncio.run(story())
