"""EventInbox: a thread emitting thousands of events wakes the UI a bounded number of times."""

from __future__ import annotations

import threading

from engine.events import Notice
from tui.inbox import EventInbox


def test_a_flood_from_another_thread_arrives_complete_in_order_with_few_wakeups():
    wakes = threading.Semaphore(0)
    inbox = EventInbox(wake=wakes.release, clock=lambda: 0.0)
    n = 20_000

    def engine():
        for i in range(n):
            inbox.put(Notice(text=str(i)))

    thread = threading.Thread(target=engine)
    thread.start()
    received, wakeups = [], 0
    while len(received) < n:
        wakes.acquire()  # the UI thread: one turn per wake-up message
        wakeups += 1
        received.extend(event.text for _, event in inbox.take())
    thread.join()
    assert received == [str(i) for i in range(n)]
    assert wakeups < n / 10  # bursts coalesce: far fewer messages than events


def test_take_with_a_limit_leaves_the_rest_and_asks_for_another_turn():
    wakeups = []
    inbox = EventInbox(wake=lambda: wakeups.append(1), clock=lambda: 0.0)
    inbox.put_many([(float(i), Notice(text=str(i))) for i in range(5)])
    assert len(wakeups) == 1
    assert [at for at, _ in inbox.take(limit=3)] == [0.0, 1.0, 2.0]
    assert len(wakeups) == 2 and len(inbox) == 2
    assert [at for at, _ in inbox.take(limit=3)] == [3.0, 4.0]
    inbox.put(Notice(text="next"))
    assert len(wakeups) == 3
