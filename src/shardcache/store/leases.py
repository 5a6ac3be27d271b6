"""Who is reading: leases, so that ``prune`` never removes a cache a live process uses.

A lease (`Lease`) is a shared ``flock`` that every process holding a cache open keeps until
``close()``; ``shardcache prune`` removes a cache only while it holds that lock exclusively
(`exclusive_lease`). Soft locks (`lockbackends.backend`) have no leases.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .fs import Directory, WrongKindError
from .lockbackends import backend

logger = logging.getLogger(__name__)

LEASE_WAIT = 5.0
"""Seconds a new reader retries its shared lease while ``prune`` holds it for a removal."""


def _open_lease(path: Path, *, create: bool) -> int:
    """A read-only descriptor of the lease file ``path`` (in ``<cache dir>/.locks``).

    Never through a symlink, never blocking on a FIFO; ``.locks`` is not created.
    """
    with Directory.open_root(path.parent.parent) as root, root.subdir(path.parent.name) as locks:
        flags = os.O_RDONLY | (os.O_CREAT if create else 0)
        return locks.open_file(path.name, flags, 0o666)


class Lease:
    """A shared lock saying "a live process has this cache open"; see the module docstring.

    ``flock``, not ``fcntl``/``lockf`` record locks: a record lock is dropped when the
    process closes *any* descriptor of the file (so one ``shardcache list`` probe in the
    same process would end it), while an flock belongs to the open file description.
    Release only ever closes the descriptor, never ``LOCK_UN``: a forked DataLoader worker
    shares the description, and an unlock there would end the parent's lease too; a close
    ends the lock only when the last process holding the description lets go.
    """

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    @classmethod
    def take(cls, path: Path) -> Lease | None:
        """The lease at ``path``, or None where one cannot be had (best effort).

        None on a read-only cache directory, where ``.locks/`` is missing (a cache copied
        out of a cache directory: no stray directory is created beside it), and with soft
        locks (set for filesystems whose locks are unreliable). Reading such a cache still
        works; only ``prune`` cannot see that it is in use.
        """
        if not backend().leases:
            return None
        try:
            # Read-only access suffices for flock, so users sharing a cache dir can lease.
            fd = _open_lease(path, create=True)
        except WrongKindError as error:
            logger.warning("no lease on %s: %s", path, error)
            return None
        except OSError as error:
            logger.debug("no lease on %s: %s", path, error)
            return None
        deadline = time.monotonic() + LEASE_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return cls(fd, path)
            except OSError as error:
                # Contention means a prune is removing a cache right now: a rename, soon over.
                if error.errno not in {errno.EAGAIN, errno.EACCES} or time.monotonic() > deadline:
                    logger.debug("no lease on %s: %s", path, error)
                    os.close(fd)
                    return None
            time.sleep(0.01)

    def release(self) -> None:
        """Let go of the lease (closes the descriptor; idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __del__(self) -> None:
        self.release()

    def __reduce__(self) -> Any:
        raise TypeError("a Lease holds a file descriptor and cannot be pickled")


@contextlib.contextmanager
def exclusive_lease(path: Path | None) -> Iterator[bool]:
    """Hold the lease at ``path`` exclusively; yields False when a process holds it.

    While held, no process can open the cache (new readers wait up to `LEASE_WAIT`).
    ``None`` (no key known) and soft locks hold nothing and yield True.
    """
    if path is None or not backend().leases:
        yield True
        return
    try:
        fd = _open_lease(path, create=False)
    except FileNotFoundError:
        yield True  # never opened since the lease file was last removed: nobody holds it
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in {errno.EAGAIN, errno.EACCES}:
                raise
            yield False
            return
        yield True
    finally:
        os.close(fd)


def lease_held(path: Path | None) -> bool | None:
    """Whether a live process holds the lease at ``path`` (None when it cannot be told)."""
    try:
        with exclusive_lease(path) as free:
            return not free
    except OSError:
        return None
