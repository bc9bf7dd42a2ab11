"""Text helpers shared by the panels: bars, durations, sizes. Plain characters, so that a bar
still reads with NO_COLOR (filled and empty cells differ in shape, not only in colour)."""

from __future__ import annotations

import time


def bar(fraction: float | None, width: int) -> str:
    if fraction is None:
        return "·" * width
    fraction = min(max(fraction, 0.0), 1.0)
    filled = int(round(fraction * width))
    return "█" * filled + "░" * (width - filled)


def bar_line(label: str, fraction: float | None, suffix: str, width: int) -> str:
    """``label`` + a bar that takes the room ``suffix`` leaves in ``width`` columns."""
    room = width - len(label) - len(suffix) - 1
    return f"{label}{bar(fraction, max(5, min(30, room)))} {suffix}"


def percent(done: float, total: float) -> str:
    return f"{100.0 * done / total:5.1f}%" if total else "   — "


def duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:  # None, NaN, negative: unknown
        return "—"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def size(n_bytes: int | float | None) -> str:
    if n_bytes is None:
        return "n/a"
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def count(n: int | float | None) -> str:
    return "—" if n is None else f"{int(n):,}"


def short_count(n: int | float | None) -> str:
    """1,234 / 45.2k / 4.51M: big counts in few columns."""
    if n is None:
        return "—"
    if n >= 1_000_000:
        return f"{n / 1_000_000:.2f}M"
    if n >= 100_000:
        return f"{n / 1000:.1f}k"
    return f"{int(n):,}"


def size_pair(used: int | float | None, total: int | float | None) -> str:
    """"12.3/79.6 GiB": used and total in the total's unit."""
    if total is None:
        return f"{size(used)}/n/a"
    unit, scale = "B", 1.0
    for candidate in ("KiB", "MiB", "GiB", "TiB"):
        if total < scale * 1024:
            break
        unit, scale = candidate, scale * 1024
    used_text = "n/a" if used is None else f"{used / scale:.1f}"
    return f"{used_text}/{total / scale:.1f} {unit}"


def rate(per_second: float | None, unit: str) -> str:
    if per_second is None:
        return "—"
    if per_second >= 100:
        return f"{per_second:,.0f} {unit}/s"
    return f"{per_second:.1f} {unit}/s"


def clock_time(unix_time: float | None) -> str:
    """Local wall-clock time of day; tests pin TZ so that snapshots do not depend on it."""
    if unix_time is None:
        return "—"
    return time.strftime("%H:%M:%S", time.localtime(unix_time))


def number(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


SPARK_BLOCKS = "▁▂▃▄▅▆▇█"


def spark(values: list[float], width: int, top: float | None = None,
          bottom: float = 0.0) -> str:
    """A one-line sparkline of the last ``width`` values, scaled from ``bottom`` to ``top``
    (default: their maximum), for a panel that has no room for a Sparkline widget beside its
    text. Values all equal to ``bottom`` draw as the lowest block."""
    values = list(values)[-width:] if width > 0 else []
    top = top or max(values, default=0)
    if not values or top <= 0:
        return ""
    last = len(SPARK_BLOCKS) - 1
    span = top - bottom
    if span <= 0:
        return SPARK_BLOCKS[0] * len(values)
    return "".join(SPARK_BLOCKS[min(max(round((v - bottom) / span * last), 0), last)]
                   for v in values)
