"""Atomic file writes: a reader (or a crash, or ``kill -9``) sees the old file or the new one,
never half of one. Write to a temporary file in the same directory, fsync, rename over the
target, fsync the directory."""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

TEMP_SUFFIX = ".tmp"


def temporary_name(path: Path, prefix: str = ".") -> Path:
    """A fresh name beside ``path`` (same filesystem, so the rename is atomic)."""
    return path.parent / f"{prefix}{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}"


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # some filesystems cannot open directories; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: Path | str, prefix: str = ".") -> Iterator[BinaryIO]:
    """``with atomic_file(path) as f: f.write(...)``: ``path`` is replaced when the block ends
    without an exception; after one, the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    tmp = temporary_name(path, prefix)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)  # umask applies, as for open()
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


def write_text(path: Path | str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))
