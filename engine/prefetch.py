"""The next batches, collated in a background thread while the device trains on this one.

``Prefetcher`` runs ``make(position)`` for each position in order in one thread and hands the
results over through a bounded queue: the training thread never waits for numpy padding, and
memory holds at most ``depth`` batches ahead. One producer, positions in the order given: the
batches come out exactly as a plain loop would make them, so an exact resume stays exact.
On CUDA ``make`` also pins the batch, so its copy to the GPU (``non_blocking=True``) does not
stop the host. ``close`` (also on leaving a ``with`` block, by a stop or an exception) ends the
thread; an exception in ``make`` is raised in the training thread at that position.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Any, Callable, Iterable

_END = object()


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Prefetcher:
    def __init__(self, make: Callable[[Any], Any], positions: Iterable, depth: int = 2) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(make, list(positions)),
                                        name="batch-prefetch", daemon=True)
        self._thread.start()

    def _produce(self, make: Callable[[Any], Any], positions: list) -> None:
        try:
            for position in positions:
                if self._stop.is_set():
                    return
                self._put(make(position))
        except BaseException as exc:  # handed to the training thread, raised there
            self._put(_Failed(exc))
            return
        self._put(_END)

    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self) -> Any:
        item = self._queue.get()
        if item is _END:
            self._queue.put(_END)  # a further next() ends too
            raise StopIteration
        if isinstance(item, _Failed):
            raise item.exc
        return item

    def close(self) -> None:
        self._stop.set()
        while True:  # unblock a producer waiting for room
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()


def pinned(batch):
    """The batch with its tensors in page-locked memory (CUDA copies them asynchronously)."""
    return dataclasses.replace(batch, src=batch.src.pin_memory(),
                               tgt_in=batch.tgt_in.pin_memory(),
                               tgt_out=batch.tgt_out.pin_memory(),
                               keep=batch.keep.pin_memory(), target=batch.target.pin_memory())
