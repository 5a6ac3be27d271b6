"""Disk usage and times of cache directories, as ``list`` and ``prune`` report them."""

from __future__ import annotations

import contextlib
import os
import stat
from datetime import datetime, timezone
from pathlib import Path

from .fs import Directory, lstat_regular
from .layout import LAST_USED_NAME, MANIFEST_NAME


def timestamp(seconds: float) -> datetime:
    """A file time as an aware UTC datetime."""
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def directory_usage(path: Path) -> tuple[int, float]:
    """Total bytes of the files in ``path`` and the newest modification time (flat dirs)."""
    total, newest = 0, 0.0
    try:
        newest = path.lstat().st_mtime
        with os.scandir(path) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    info = entry.stat(follow_symlinks=False)
                    if entry.is_file(follow_symlinks=False):
                        total += info.st_size
                    newest = max(newest, info.st_mtime)
    except OSError:
        pass
    return total, newest


def last_used(path: Path) -> datetime | None:
    """The ``last-used`` marker's time, else the manifest's (a cache never opened since)."""
    for name in (LAST_USED_NAME, MANIFEST_NAME):
        with contextlib.suppress(OSError):
            return timestamp(lstat_regular(path / name).st_mtime)
    return None


def touch_last_used(directory: Directory) -> None:
    """Record a use of the opened cache ``directory``; a read-only cache is fine.

    The marker is created group-writable (``rw-rw----``) when the directory is a team's
    (setgid), so that every member can touch it.
    """
    try:
        os.utime(LAST_USED_NAME, dir_fd=directory.fd, follow_symlinks=False)
    except FileNotFoundError:
        team = bool(directory.stat().st_mode & stat.S_ISGID)
        with contextlib.suppress(OSError):
            fd = directory.open_file(LAST_USED_NAME, os.O_WRONLY | os.O_CREAT, 0o666)
            try:
                if team:
                    os.fchmod(fd, 0o660)
            finally:
                os.close(fd)
    except OSError:
        pass
