"""The build lock: one builder per key across processes, jobs and nodes, with a deadline.

The lock file lies beside the caches (``.locks/<key>.lock``); an owner file next to it says
who holds it, since when, and how far the build got, so that waiters can log it. With fcntl
locks (the default) the kernel releases a dead holder's lock; on filesystems where fcntl
locks are unreliable, ``SHARDCACHE_LOCK=soft`` uses lock files that a waiter removes once
their owner, on this host, has died.
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

from ..errors import ConfigurationError, LockTimeoutError
from .atomic import write_atomically

logger = logging.getLogger(__name__)

DEFAULT_LOCK_TIMEOUT = 6 * 3600.0
"""Seconds a process waits for another's build before giving up: longer than any sane build."""

WAIT_LOG_INTERVAL = 30.0
"""Seconds between the log lines of a waiting process."""

PROGRESS_INTERVAL = 2.0
"""Least seconds between two progress updates of the owner file."""


def lock_kind() -> str:
    """``fcntl`` (default) or ``soft``, from ``SHARDCACHE_LOCK`` read at call time."""
    kind = os.environ.get("SHARDCACHE_LOCK", "fcntl").strip().lower() or "fcntl"
    if kind not in {"fcntl", "soft"}:
        raise ConfigurationError(f"SHARDCACHE_LOCK={kind!r}: expected 'fcntl' or 'soft'")
    return kind


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_owner(path: Path) -> dict[str, Any] | None:
    """The owner record of a lock, or None when there is none or it is unreadable."""
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def describe_owner(owner: dict[str, Any] | None) -> str:
    """``pid 123 on host h since 12:00:00 (450/2000 samples)``, as far as it is known."""
    if owner is None:
        return "an unknown process"
    text = f"pid {owner.get('pid')} on host {owner.get('host')} since {owner.get('since')}"
    if owner.get("total"):
        text += f" ({owner.get('done', 0)}/{owner['total']} samples)"
    return text


class BuildLock:
    """Hold the build lock of one cache key; a context manager.

    Args:
        lock_path: the lock file (its directory is created).
        name: the cache's name, for log lines.
        timeout: seconds to wait for another holder before `LockTimeoutError`.
    """

    def __init__(self, lock_path: Path, name: str, timeout: float = DEFAULT_LOCK_TIMEOUT) -> None:
        self.lock_path = lock_path
        self.owner_path = lock_path.with_suffix(".owner.json")
        self.name = name
        self.timeout = timeout
        self._owner: dict[str, Any] = {}
        self._last_progress = 0.0
        # Created here, in the process that takes it: filelock 4 refuses a lock object
        # that crossed a fork.
        lock_class = filelock.SoftFileLock if lock_kind() == "soft" else filelock.FileLock
        self._lock = lock_class(str(lock_path), thread_local=False)

    def __enter__(self) -> BuildLock:
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.timeout
        # The first attempt does not wait, so that a waiter says at once whom it waits for
        # (not after WAIT_LOG_INTERVAL, nor never when the timeout is shorter than that).
        wait = 0.0
        while True:
            try:
                self._lock.acquire(timeout=wait)
                break
            except filelock.Timeout:
                owner = read_owner(self.owner_path)
                if self._break_dead_soft_lock(owner):
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
        # Only a holder writes this key's owner file: temporary ones beside it were left by
        # a holder killed mid-write.
        for stale in self.owner_path.parent.glob(f".tmp-*-{self.owner_path.name}"):
            stale.unlink(missing_ok=True)
        self._owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "name": self.name,
        }
        self._write_owner()
        return self

    def _write_owner(self) -> None:
        """Best effort: the owner file only informs waiters.

        A full disk must not fail the build for it, nor (raised from ``__enter__``) leave
        the lock taken with no ``__exit__`` to release it.
        """
        try:
            write_atomically(self.owner_path, json.dumps(self._owner).encode(), durable=False)
        except OSError as error:
            logger.debug("cannot update the lock owner file %s: %s", self.owner_path, error)

    def _break_dead_soft_lock(self, owner: dict[str, Any] | None) -> bool:
        """Remove a soft lock whose owner died on this host; fcntl locks need no help."""
        if not isinstance(self._lock, filelock.SoftFileLock) or owner is None:
            return False
        if getattr(self._lock, "pid", None) is not None:
            # The lock file names its holder (filelock >= 3.22), and filelock breaks it when
            # that holder died; our owner file may still name a dead earlier holder while a
            # live one has just taken the lock, and must not break it.
            return False
        if owner.get("host") != socket.gethostname() or _pid_alive(int(owner.get("pid", 0))):
            return False
        logger.warning("removing the stale lock of dead %s", describe_owner(owner))
        self.lock_path.unlink(missing_ok=True)
        return True

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
            self.owner_path.unlink(missing_ok=True)
        finally:
            self._lock.release()
