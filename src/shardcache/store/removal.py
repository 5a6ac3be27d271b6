"""Removing caches: rename out of sight, then unlink; never truncate what a reader maps.

A cache goes into ``.trash/`` with one rename, so no reader ever sees half a directory, and
its files are then unlinked: a process that has the shards mapped (or open) keeps reading
them. What a process killed mid-removal leaves in ``.trash/`` is emptied later. Nothing is
removed that `inventory.is_ours` does not prove shardcache made, and nothing through a
symlink (`fs.Directory.remove_tree`).
"""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import LockTimeoutError
from .fs import Directory
from .inventory import is_ours
from .layout import STAGING_DIR, CacheRoot
from .leases import exclusive_lease
from .locking import BuildLock
from .owners import describe_owner, owner_path, read_owner
from .tagging import is_tagged
from .tree import CacheTree


def _parent(tree: CacheTree, path: Path) -> tuple[Directory, bool]:
    """The opened directory holding ``path`` (a cache or staging directory); close it?"""
    parts = path.absolute().relative_to(tree.path).parts
    if len(parts) == 1:
        return tree.root, False
    if len(parts) == 2 and parts[0] == STAGING_DIR:
        return tree.staging_root(), True
    raise ValueError(f"{path} is not an entry of the cache directory {tree.path}")


def discard(tree: CacheTree, path: Path) -> None:
    """Remove the cache (or staging) directory ``path`` of ``tree``.

    One rename out of sight, then the renamed entry is deleted (never a symlink's target).
    """
    parent, close = _parent(tree, path)
    try:
        with tree.trash(create=True) as trash:
            moved = f"{path.name}.{secrets.token_hex(4)}"
            parent.rename(path.name, trash, moved)
            with contextlib.suppress(OSError):
                trash.remove_tree(moved)
    finally:
        if close:
            parent.close()


def empty_trash(tree: CacheTree) -> int:
    """Delete what interrupted removals left in ``.trash/``; return the bytes freed.

    Only in a tagged cache directory (`tagging`): a ``.trash`` elsewhere may be a user's.
    """
    if not is_tagged(tree.root):
        return 0
    try:
        trash = tree.trash()
    except FileNotFoundError:
        return 0
    freed = 0
    with trash:
        for name, _ in trash.entries():
            with contextlib.suppress(OSError):
                freed += trash.remove_tree(name)
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

    Kept when shardcache cannot prove it made it, when a build of it is in progress, and,
    with ``respect_leases`` (``prune``), when a live process has it open; otherwise
    (``clear``) removed all the same.

    Args:
        cache_dir: the cache directory.
        path: what to remove.
        name: its name, for the lock's log lines.
        key: its full key, when known (the lock and lease are the key's).
        respect_leases: keep it when a live process has it open.
    """
    names = CacheRoot(cache_dir)
    lock: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    if key is not None:
        lock = BuildLock(names.lock(key), name, timeout=0)
    lease = names.lease(key) if key is not None and respect_leases else None
    try:
        with CacheTree.open(cache_dir) as tree:
            if not is_ours(tree.root, path):
                return Removal(False, "shardcache did not make it (no manifest or lock of its own)")
            with lock, exclusive_lease(lease) as free:
                if not free:
                    return Removal(False, "in use by a running process")
                try:
                    discard(tree, path)
                except FileNotFoundError:
                    return Removal(True)  # someone else removed it meanwhile
    except LockTimeoutError:
        owner = read_owner(owner_path(names.lock(key or "")))
        return Removal(False, f"a build is in progress ({describe_owner(owner)})")
    except OSError as error:
        return Removal(False, f"cannot be removed: {error}")
    # The empty .staging/ stays: removing it could race with a build creating its own
    # directory inside it.
    return Removal(True)
