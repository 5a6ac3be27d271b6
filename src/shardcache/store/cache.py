"""Open a subset's cache, building it first when it is missing or damaged."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.errors import CacheDirError, CorruptCacheError
from ..core.settings import DEFAULT_LOCK_TIMEOUT
from ..core.types import RawDataLoader
from .explain import explain_miss
from .key import CacheKey, cache_key
from .layout import KEY_CHARS_IN_NAME, MANIFEST_NAME, CacheRoot
from .locking import BuildLock
from .options import ShardOptions
from .reader import CacheDataset
from .removal import discard, empty_trash
from .slices import end_abandoned_builds
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


def prepare_directory(path: Path) -> None:
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


def open_or_clear(root: CacheRoot, key: CacheKey, name: str) -> CacheDataset | None:
    """Under ``key``'s build lock: the cache another process published meanwhile, or None.

    When None, what stands in the way of a build is gone: a damaged cache, a directory of
    the cache's name without a valid manifest, the trash of an interrupted removal.
    """
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
    return None


def _build_under_lock(
    root: CacheRoot,
    key: CacheKey,
    subset: str,
    items: Sequence[Any],
    loader: RawDataLoader,
    *,
    parallel: int,
    options: ShardOptions,
    lock_timeout: float,
) -> CacheDataset:
    """Take ``key``'s build lock, then open what another process built meanwhile, or build."""
    name = root.cache_name(subset, key.digest)
    with BuildLock(root.lock(key.digest), name, lock_timeout) as lock:
        existing = open_or_clear(root, key, name)
        if existing is not None:
            return existing
        end_abandoned_builds(root, key.digest, keep=None, timeout=lock_timeout, name=name)
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
            options=options,
        )
    with contextlib.suppress(OSError):
        root.staging_root().rmdir()  # tidy when no other build is staged
    return CacheDataset(path)


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
    error naming the file. ``shard_bytes`` is the shard size target (None: automatic).
    """
    options = ShardOptions(target_bytes=shard_bytes)
    root = CacheRoot(Path(cache_dir))  # a str too: scripts without Lightning pass one
    key = cache_key(subset, items, loader)
    damage: CorruptCacheError | None = None
    try:
        opened = _open_published(root, key)
    except CorruptCacheError as error:
        damage = error
        name = root.cache_name(subset, key.digest)
        logger.warning("cache %s is damaged and will be rebuilt: %s", name, error)
    else:
        if opened is not None:
            return opened
        logger.info("%s", explain_miss(root, subset, key, items))
    try:
        prepare_directory(root.path)
    except CacheDirError as error:
        if damage is None:
            raise
        # Name the damaged file, not only the directory that keeps us from rebuilding it.
        raise CacheDirError(f"{damage}; it cannot be rebuilt: {error}") from damage
    # Another process may have built it while we waited for the lock: checked under it.
    return _build_under_lock(
        root,
        key,
        subset,
        items,
        loader,
        parallel=parallel,
        options=options,
        lock_timeout=lock_timeout,
    )
