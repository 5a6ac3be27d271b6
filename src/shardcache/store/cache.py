"""Open a subset's cache, building it first when it is missing or damaged."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import CacheDirError, CorruptCacheError
from ..typing import RawDataLoader
from .explain import explain_miss
from .format import MANIFEST_NAME
from .inventory import empty_trash
from .key import KEY_CHARS_IN_NAME, CacheKey, cache_key
from .layout import CacheRoot
from .lock import DEFAULT_LOCK_TIMEOUT, BuildLock
from .reader import CacheDataset
from .writer import build

logger = logging.getLogger(__name__)


def _open_published(root: CacheRoot, key: CacheKey) -> CacheDataset | None:
    """The published cache of ``key``, opened and checked, or None when there is none.

    Raises:
        CorruptCacheError: it exists but fails a check.
    """
    path = root.find(key.digest)
    return None if path is None else _open_checked(path, key)


def _open_checked(path: Path, key: CacheKey) -> CacheDataset:
    """Open ``path``, a published cache, and check that its manifest is ``key``'s.

    A directory's name holds only 96 bits of the key: one copied or renamed by hand, or
    holding another cache's manifest, would otherwise serve another split's samples.
    """
    dataset = CacheDataset(path)
    if dataset.manifest.key != key.digest:
        dataset.close()
        manifest = path / MANIFEST_NAME
        raise CorruptCacheError(
            f"{manifest}: manifest is for key {dataset.manifest.key[:KEY_CHARS_IN_NAME]}..., "
            f"not {key.short}... (was the directory copied or renamed?)",
            path=manifest,
        )
    return dataset


def _prepare_directory(path: Path) -> None:
    """Create the cache directory, or say exactly why it cannot be used for a build."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as error:
        raise CacheDirError(
            f"cache directory {path} cannot be created: a parent is a regular file ({error}). "
            "Set cache_dir or SHARDCACHE_DIR to a directory"
        ) from error
    except OSError as error:
        raise CacheDirError(f"cache directory {path} cannot be created: {error}") from error
    if not path.is_dir():
        raise CacheDirError(f"cache directory {path} is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise CacheDirError(
            f"cache directory {path} is not writable and holds no usable cache to read. "
            "Build the cache where you can write, or set cache_dir / SHARDCACHE_DIR"
        )


def discard(root: CacheRoot, path: Path) -> None:
    """Remove a published cache: one rename out of sight, then delete.

    Files are unlinked, never truncated, so a process that has the shards mapped keeps
    reading them.
    """
    trash = root.trash()
    trash.mkdir(exist_ok=True)
    moved = trash / f"{path.name}.{secrets.token_hex(4)}"
    path.rename(moved)
    shutil.rmtree(moved, ignore_errors=True)


def ensure_cache(
    cache_dir: str | os.PathLike[str],
    subset: str,
    items: Sequence[Any],
    loader: RawDataLoader,
    *,
    parallel: int = -1,
    shard_bytes: int | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> CacheDataset:
    """Open ``subset``'s cache in ``cache_dir``, building it under the key's lock if needed.

    A published cache is opened without the lock (so a read-only cache directory works);
    a damaged one is discarded and rebuilt, or, when it cannot be removed, refused with an
    error naming the file.
    """
    root = CacheRoot(Path(cache_dir))  # a str too: scripts without Lightning pass one
    key = cache_key(subset, items, loader)
    name = root.cache_name(subset, key.digest)
    damage: CorruptCacheError | None = None
    try:
        opened = _open_published(root, key)
    except CorruptCacheError as error:
        damage = error
        logger.warning("cache %s is damaged and will be rebuilt: %s", name, error)
    else:
        if opened is not None:
            return opened
        logger.info("%s", explain_miss(root, subset, key, items))
    try:
        _prepare_directory(root.path)
    except CacheDirError as error:
        if damage is None:
            raise
        # Name the damaged file, not only the directory that keeps us from rebuilding it.
        raise CacheDirError(f"{damage}; it cannot be rebuilt: {error}") from damage
    with BuildLock(root.lock(key.digest), name, lock_timeout) as lock:
        # Another process may have built it while we waited for the lock.
        existing = root.find(key.digest)
        if existing is not None:
            try:
                return _open_checked(existing, key)
            except CorruptCacheError as error:
                logger.warning("discarding damaged cache %s: %s", existing.name, error)
                try:
                    discard(root, existing)
                except OSError as removal:
                    raise error from removal
        leftover = root.path / name
        if leftover.exists():  # a directory of that name without a valid manifest
            discard(root, leftover)
        empty_trash(root.path)  # what a process killed inside `discard` left behind
        path = build(
            root_path=root.path,
            staging=root.staging(key.digest),
            name=name,
            subset=subset,
            items=items,
            loader=loader,
            key=key,
            lock=lock,
            parallel=parallel,
            shard_bytes=shard_bytes,
        )
    with contextlib.suppress(OSError):
        root.staging(key.digest).parent.rmdir()  # tidy when no other build is staged
    return CacheDataset(path)
