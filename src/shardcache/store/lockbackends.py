"""The lock backend, chosen in one place (`backend`) from ``SHARDCACHE_LOCK``.

``fcntl``: the kernel releases a dead holder's lock, and leases work. ``soft``: lock files,
for filesystems whose ``fcntl`` locks hang; a waiter removes a lock whose owner died on
this host; no leases. A lock for another filesystem is one more backend here.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
from pathlib import Path
from typing import Any

import filelock

from ..core import settings
from .owners import describe_owner

logger = logging.getLogger(__name__)


class _Backend:
    """``fcntl`` locks: the kernel releases them when their holder dies; leases work."""

    leases = True

    def file_lock(self, path: Path, mode: int | None) -> filelock.BaseFileLock:
        # Created by the caller, in the process that takes it: filelock 4 refuses a lock
        # object that crossed a fork. ``mode``: exact permissions (a team's lock files are
        # group-writable whatever the umask of the member who made them).
        if mode is None:
            return filelock.FileLock(str(path), thread_local=False)
        return filelock.FileLock(str(path), thread_local=False, mode=mode)

    def held(self, path: Path) -> bool | None:
        """Whether a live process holds the lock at ``path`` (None: the backend cannot tell).

        Opened without creating it: a lock file that is gone is not held. Opened for writing:
        on NFS, Linux emulates ``flock`` with ``fcntl`` locks, which need it. A lock file that
        cannot be opened (another user's, or a symlink) counts as held: its waiters wait.
        """
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return False
        except OSError as error:  # another user's, or a symlink or FIFO planted there
            if error.errno in {errno.EACCES, errno.EPERM, errno.ELOOP}:
                return True
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in {errno.EAGAIN, errno.EACCES}:
                raise
            return True
        finally:
            os.close(fd)  # also ends the probe's own lock, when it got one
        return False

    def break_stale(
        self,
        lock: filelock.BaseFileLock,  # noqa: ARG002 (the soft backend's signature)
        path: Path,  # noqa: ARG002
        owner: dict[str, Any] | None,  # noqa: ARG002
    ) -> bool:
        """Remove a lock whose holder died: never needed, the kernel releases fcntl locks."""
        return False


class _SoftBackend(_Backend):
    """Lock files: they work on any filesystem, and a dead holder's must be broken."""

    leases = False

    def file_lock(self, path: Path, mode: int | None) -> filelock.BaseFileLock:
        if mode is None:
            return filelock.SoftFileLock(str(path), thread_local=False)
        return filelock.SoftFileLock(str(path), thread_local=False, mode=mode)

    def held(self, path: Path) -> bool | None:  # noqa: ARG002 (the fcntl backend's signature)
        """Cannot be told from a lock file alone: its holder may have died (see `pid_alive`)."""
        return None

    def break_stale(
        self, lock: filelock.BaseFileLock, path: Path, owner: dict[str, Any] | None
    ) -> bool:
        if owner is None:
            return False
        if getattr(lock, "pid", None) is not None:
            # The lock file names its holder (filelock >= 3.22), and filelock breaks it when
            # that holder died; our owner file may still name a dead earlier holder while a
            # live one has just taken the lock, and must not break it.
            return False
        if owner.get("host") != socket.gethostname() or pid_alive(int(owner.get("pid", 0))):
            return False
        logger.warning("removing the stale lock of dead %s", describe_owner(owner))
        path.unlink(missing_ok=True)
        return True


_BACKENDS: dict[settings.LockKind, _Backend] = {"fcntl": _Backend(), "soft": _SoftBackend()}


def backend() -> _Backend:
    """The lock backend ``SHARDCACHE_LOCK`` asks for (read at call time)."""
    return _BACKENDS[settings.lock_kind()]


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
