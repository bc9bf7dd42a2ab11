"""The progress bars of `datasets` and `huggingface_hub` (file downloads, split generation), as
``DownloadProgress`` events.

Their tqdm bars draw on stderr, where the app draws, so they are switched off. Inside
``with library_progress(emit):`` every bar of either library is made anyway, writing nowhere, and
each redraw becomes an event instead: a few a second per bar at most, and its final state when it
closes. Both libraries create all their bars from one tqdm subclass each
(``datasets.utils.tqdm.tqdm``, ``huggingface_hub.utils.tqdm.tqdm``; fsspec downloads get the
former as ``tqdm_cls``), so those two classes are the hook. Outside the ``with`` the classes
behave exactly as the libraries wrote them.
"""

from __future__ import annotations

import importlib
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

from engine.events import DownloadProgress, Emit
from engine.progress import EVENT_INTERVAL

_lock = threading.RLock()
_emitters: list[Emit] = []  # the innermost active ``library_progress`` receives the events
_hooked: set[type] = set()


class _Nowhere:
    """A file that a bar writes to and nobody reads."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


@contextmanager
def library_progress(emit: Emit | None) -> Iterator[None]:
    if emit is None:
        yield
        return
    _hook_library_bars()
    with _lock:
        _emitters.append(emit)
    try:
        yield
    finally:
        with _lock:
            _emitters.remove(emit)


def _current() -> Emit | None:
    with _lock:
        return _emitters[-1] if _emitters else None


def _hook_library_bars() -> None:
    # the modules, by name: both packages' ``utils`` also export the class under the same name
    classes = [importlib.import_module(f"{package}.utils.tqdm").tqdm
               for package in ("datasets", "huggingface_hub")]
    with _lock:
        for cls in classes:
            if cls not in _hooked:
                _hook(cls)
                _hooked.add(cls)


def _hook(cls: type) -> None:
    library_init, library_display, library_close = cls.__init__, cls.display, cls.close
    base = cls.__mro__[1]  # tqdm's own class, below the libraries' "disabled?" check

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        emit = _current()
        self._routed_to = emit
        if emit is None:
            library_init(self, *args, **kwargs)
            return
        kwargs.pop("name", None)
        kwargs.update(file=_Nowhere(), disable=False)
        self._routed_last = float("-inf")
        base.__init__(self, *args, **kwargs)

    def display(self: Any, msg: str | None = None, pos: int | None = None) -> bool:
        routed = getattr(self, "_routed_to", None)
        if routed is None:
            return library_display(self, msg, pos)
        if not self.disable:  # tqdm's close() disables the bar before its last redraw
            _report(self, routed, final=False)
        return True

    def close(self: Any) -> None:
        routed = getattr(self, "_routed_to", None)
        was_open = not self.disable
        library_close(self)
        if routed is not None and was_open:
            _report(self, routed, final=True)

    cls.__init__, cls.display, cls.close = __init__, display, close


def _report(bar: Any, emit: Emit, final: bool) -> None:
    now = time.monotonic()
    if not final and now - bar._routed_last < EVENT_INTERVAL:
        return
    bar._routed_last = now
    info = bar.format_dict
    done, total, elapsed = float(info["n"]), float(info["total"] or 0), float(info["elapsed"])
    rate = info.get("rate") or (done / elapsed if elapsed > 0 else 0.0)
    eta = (total - done) / rate if rate > 0 and total > done else 0.0
    event = DownloadProgress(what=str(info.get("prefix") or "Downloading"), done=done,
                             total=total, unit=str(info.get("unit") or "it").strip(),
                             per_second=round(rate, 1), eta=round(eta, 1),
                             elapsed=round(elapsed, 3), final=final)
    with _lock:
        emit(event)
