"""Removing caches: rename out of sight, then unlink; never truncate what a reader maps.

A cache goes into ``.trash/`` with one rename, so no reader ever sees half a directory, and
its files are then unlinked: a process that has the shards mapped (or open) keeps reading
them. What a process killed mid-removal leaves in ``.trash/`` is emptied later.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import LockTimeoutError
from .layout import CacheRoot
from .locking import BuildLock, describe_owner, exclusive_lease, owner_path, read_owner
from .usage import directory_usage


def discard(root: CacheRoot, path: Path) -> None:
    """Remove the cache directory ``path`` of ``root``: one rename out of sight, then delete."""
    trash = root.trash()
    trash.mkdir(exist_ok=True)
    moved = trash / f"{path.name}.{secrets.token_hex(4)}"
    path.rename(moved)
    shutil.rmtree(moved, ignore_errors=True)


def empty_trash(cache_dir: Path) -> int:
    """Delete what interrupted removals left in ``.trash/``; return the bytes freed."""
    trash = CacheRoot(cache_dir).trash()
    freed = 0
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for path in sorted(trash.iterdir()):
            if path.is_dir() and not path.is_symlink():
                freed += directory_usage(path)[0]
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    freed += path.lstat().st_size
                    path.unlink()
    return freed


@dataclass(frozen=True)
class Removal:
    """What became of one entry that was asked to go.

    Attributes:
        removed: it is gone (renamed out of sight and deleted).
        reason: why it was kept, when it was.
    """

    removed: bool
    reason: str | None = None


def remove(
    cache_dir: Path, path: Path, name: str, key: str | None, *, respect_leases: bool
) -> Removal:
    """Remove the cache (or staging) directory ``path`` under its build lock.

    Kept when a build of it is in progress, and, with ``respect_leases`` (``prune``), when
    a live process has it open; otherwise (``clear``) removed all the same.

    Args:
        cache_dir: the cache directory.
        path: what to remove.
        name: its name, for the lock's log lines.
        key: its full key, when known (the lock and lease are the key's).
        respect_leases: keep it when a live process has it open.
    """
    root = CacheRoot(cache_dir)
    lock: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    if key is not None:
        lock = BuildLock(root.lock(key), name, timeout=0)
    lease = root.lease(key) if key is not None and respect_leases else None
    try:
        with lock, exclusive_lease(lease) as free:
            if not free:
                return Removal(False, "in use by a running process")
            try:
                discard(root, path)
            except FileNotFoundError:
                return Removal(True)  # someone else removed it meanwhile
    except LockTimeoutError:
        owner = read_owner(owner_path(root.lock(key or "")))
        return Removal(False, f"a build is in progress ({describe_owner(owner)})")
    except OSError as error:
        return Removal(False, f"cannot be removed: {error}")
    # The empty .staging/ stays: removing it could race with a build creating its own
    # directory inside it.
    return Removal(True)
