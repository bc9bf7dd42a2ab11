"""Pause blocks the engine at its next safe point; resume releases it; stop wakes a paused run."""

import threading
import time

from engine.control import RunControl


def test_pause_blocks_checkpoint_until_resume():
    control = RunControl()
    passed = []
    control.pause()
    worker = threading.Thread(target=lambda: passed.append(control.checkpoint()))
    worker.start()
    time.sleep(0.2)
    assert passed == [] and control.paused
    control.resume()
    worker.join(timeout=5)
    assert passed == [False]
    assert control.paused_seconds >= 0.2


def test_stop_wakes_a_paused_run_and_says_stop():
    control = RunControl()
    control.pause()
    result = []
    worker = threading.Thread(target=lambda: result.append(control.checkpoint()))
    worker.start()
    control.stop()
    worker.join(timeout=5)
    assert result == [True] and control.stop_requested and not control.paused


def test_listeners_hear_each_change_once():
    control = RunControl()
    heard = []
    control.add_listener(heard.append)
    control.pause()
    control.pause()
    control.resume()
    control.resume()
    control.stop()
    control.stop()
    control.pause()  # no pausing a stopped run
    assert heard == ["paused", "resumed", "stopped"]
    control.remove_listener(heard.append)


def test_paused_so_far_counts_a_pause_in_progress():
    control = RunControl()
    control.pause()
    time.sleep(0.1)
    assert control.paused_so_far() >= 0.1
    assert control.paused_seconds == 0.0
