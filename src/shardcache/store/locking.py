"""Who may build: one builder per key across processes, jobs and nodes, with a deadline.

`BuildLock` takes the lock on the backend `lockbackends.backend` chooses; an owner file
beside the lock (`owners`) says who holds it, since when and how far the build got, so
that waiters can log it. Leases (who is reading) are `leases`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import filelock

from ..core.errors import CacheDirError, LockTimeoutError
from ..core.settings import DEFAULT_LOCK_TIMEOUT
from .atomic import write_atomically
from .fs import Directory
from .layout import TEMPORARY_PREFIX
from .lockbackends import backend
from .owners import describe_owner, owner_path, read_owner
from .tree import CacheTree
from .trust import group_name, user_name

logger = logging.getLogger(__name__)

WAIT_LOG_INTERVAL = 30.0
"""Seconds between the log lines of a waiting process."""

PROGRESS_INTERVAL = 2.0
"""Least seconds between two progress updates of the owner file."""


def _locks_refused(locks: Path, error: OSError) -> CacheDirError:
    """`CacheDirError` for a ``.locks`` this user cannot lock in: whose it is, and the fix."""
    try:
        info = locks.lstat()
        whose = (
            f" (owner {user_name(info.st_uid)}, group {group_name(info.st_gid)}, mode "
            f"{info.st_mode & 0o7777:04o})"
        )
    except OSError:
        whose = ""
    return CacheDirError(
        f"cannot take a build lock in {locks}{whose}: {error.strerror or error}. Use a cache "
        "directory of your own (cache_dir= or SHARDCACHE_DIR), or have the owner of "
        f"{locks.parent} make it a team directory: `shardcache share --group GROUP "
        f"--cache-dir {locks.parent}`"
    )


class BuildLock:
    """Hold the build lock of one cache key; a context manager.

    Args:
        lock_path: the lock file (its directory is created).
        name: the cache's name, for log lines.
        timeout: seconds to wait for another holder before `LockTimeoutError`.
    """

    def __init__(self, lock_path: Path, name: str, timeout: float = DEFAULT_LOCK_TIMEOUT) -> None:
        self.lock_path = lock_path.absolute()
        self.owner_path = owner_path(self.lock_path)
        self.name = name
        self.timeout = timeout
        self._owner: dict[str, Any] = {}
        self._last_progress = 0.0
        self._backend = backend()
        self._locks: Directory | None = None
        self._lock: filelock.BaseFileLock | None = None

    def _open_locks(self) -> tuple[Directory, int | None]:
        """``.locks`` (created, never through a symlink) and the lock files' mode."""
        with CacheTree.open(self.lock_path.parent.parent, create=True) as tree:
            try:
                locks = tree.locks(create=True)
            except PermissionError as error:
                raise _locks_refused(self.lock_path.parent, error) from error
            return locks, tree.policy.shared_file_mode

    def __enter__(self) -> BuildLock:
        self._locks, mode = self._open_locks()
        try:
            self._lock = self._backend.file_lock(self.lock_path, mode)
            self._acquire(self._lock)
        except PermissionError as error:
            self._close_locks()
            raise _locks_refused(self.lock_path.parent, error) from error
        except BaseException:
            self._close_locks()
            raise
        # Only a holder writes this key's owner file: temporary ones beside it were left by
        # a holder killed mid-write.
        suffix = f"-{self.owner_path.name}"
        for name, _ in self._locks.entries():
            if name.startswith(TEMPORARY_PREFIX) and name.endswith(suffix):
                self._locks.unlink(name, missing_ok=True)
        self._owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "name": self.name,
        }
        self._write_owner()
        return self

    def _acquire(self, lock: filelock.BaseFileLock) -> None:
        deadline = time.monotonic() + self.timeout
        # The first attempt does not wait, so that a waiter says at once whom it waits for
        # (not after WAIT_LOG_INTERVAL, nor never when the timeout is shorter than that).
        wait = 0.0
        while True:
            try:
                lock.acquire(timeout=wait)
            except filelock.Timeout:
                owner = read_owner(self.owner_path)
                if self._backend.break_stale(lock, self.lock_path, owner):
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LockTimeoutError(
                        f"gave up after {self.timeout:.0f} s waiting for the build of "
                        f"{self.name}: lock {self.lock_path} is held by "
                        f"{describe_owner(owner)}"
                    ) from None
                logger.warning(
                    "waiting for %s, building %s (lock %s; giving up in %.0f s)",
                    describe_owner(owner),
                    self.name,
                    self.lock_path,
                    remaining,
                )
                # Never past the deadline: lock_timeout is the waiter's own bound.
                wait = min(WAIT_LOG_INTERVAL, remaining)
            else:
                return

    def _close_locks(self) -> None:
        if self._locks is not None:
            self._locks.close()
            self._locks = None

    def _write_owner(self) -> None:
        """Best effort: the owner file only informs waiters.

        A full disk must not fail the build for it, nor (raised from ``__enter__``) leave
        the lock taken with no ``__exit__`` to release it.
        """
        if self._locks is None:
            return
        try:
            data = json.dumps(self._owner).encode()
            write_atomically(self._locks, self.owner_path.name, data, durable=False)
        except OSError as error:
            logger.debug("cannot update the lock owner file %s: %s", self.owner_path, error)

    def report_progress(self, done: int, total: int) -> None:
        """Record progress in the owner file, at most every `PROGRESS_INTERVAL` seconds."""
        now = time.monotonic()
        if now - self._last_progress < PROGRESS_INTERVAL and done < total:
            return
        self._last_progress = now
        self._owner.update(done=done, total=total)
        self._write_owner()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if self._locks is not None:
                self._locks.unlink(self.owner_path.name, missing_ok=True)
        finally:
            try:
                if self._lock is not None:
                    self._lock.release()
            finally:
                self._close_locks()


def build_in_progress(lock_path: Path) -> bool:
    """Whether a live process holds the build lock at ``lock_path`` (a non-blocking probe)."""
    try:
        lock_path.lstat()
    except OSError:
        return False
    try:
        with BuildLock(lock_path, lock_path.stem[:24], timeout=0):
            return False
    except LockTimeoutError:
        return True
    except OSError:
        # A read-only cache directory (nobody can be building there), or locks that are
        # not this user's to take.
        return False
