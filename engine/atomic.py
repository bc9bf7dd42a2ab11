"""Atomic file writes: a reader (or a crash, or ``kill -9``) sees the old file or the new one,
never half of one. Write to a temporary file in the same directory, fsync, rename over the
target, fsync the directory."""

from __future__ import annotations

import errno
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
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:  # name the file in the error
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    fsync_dir(path.parent)


def write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


def write_text(path: Path | str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


# --- a full or read-only disk --------------------------------------------------------------

# errors that say the storage refused the write, not that the program is wrong
STORAGE_ERRNOS = {errno.ENOSPC: "no space left on", errno.EDQUOT: "disk quota exceeded on",
                  errno.EROFS: "read-only filesystem", errno.EIO: "input/output error on"}


def storage_error(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc`` when the storage refused a write (torch.save reports a failed
    write as a RuntimeError whose context is the OSError); None for anything else."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in STORAGE_ERRNOS:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def mount_of(path: Path | str) -> str:
    """The filesystem ``path`` lives on, e.g. "/work (/dev/sda1)" or "/mnt/x (tmpfs)"."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    mounts = {}
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 2:
                    mounts[fields[1].replace("\\040", " ")] = fields[0]
    except OSError:
        pass
    for candidate in (path, *path.parents):
        if str(candidate) in mounts:
            return f"{candidate} ({mounts[str(candidate)]})"
    return str(path)


def storage_message(err: OSError, path: Path | str, what: str) -> str:
    """One line: what the storage refused, where, and what was being written."""
    return f"{STORAGE_ERRNOS[err.errno]} {mount_of(Path(path).parent)} while {what}"
