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
from ..core.types import RawDataLoader, Transform
from .abandoned import end_abandoned_builds
from .explain import explain_miss
from .fs import WrongKindError
from .inventory import is_ours
from .key import CacheKey, cache_key
from .layout import KEY_CHARS_IN_NAME, MANIFEST_NAME, STAGING_DIR, CacheRoot
from .locking import BuildLock
from .options import ShardOptions
from .reader import CacheDataset
from .removal import discard, empty_trash
from .tagging import ensure_tagged
from .tree import CacheTree
from .trust import verify_first_use
from .writer import build

logger = logging.getLogger(__name__)


def _open_checked(tree: CacheTree, path: Path, key: CacheKey) -> CacheDataset:
    """Open ``path``, a published cache of ``tree``, and check that its manifest is ``key``'s.

    The directory is opened through the tree, so its owner and mode are checked (`trust`).
    A directory's name holds only 96 bits of the key: one copied or renamed by hand, or
    holding another cache's manifest, would otherwise serve another split's samples.

    Raises:
        CorruptCacheError: it fails a check (the caller rebuilds it).
        CacheDirError: it is not to be trusted (never rebuilt over).
    """
    try:
        directory = tree.root.subdir(path.name)
    except FileNotFoundError as error:  # removed since it was found
        raise CorruptCacheError(f"{path}: cache is missing", path=path) from error
    except WrongKindError as error:
        raise CorruptCacheError(str(error), path=path) from error
    with directory:
        dataset = CacheDataset(path, directory=directory)
    if dataset.manifest.key != key.digest:
        dataset.close()
        manifest = path / MANIFEST_NAME
        raise CorruptCacheError(
            f"{manifest}: manifest is for key {dataset.manifest.key[:KEY_CHARS_IN_NAME]}..., "
            f"not {key.short}... (was the directory copied or renamed?)",
            path=manifest,
        )
    return dataset


def _verified(tree: CacheTree, dataset: CacheDataset) -> CacheDataset:
    """``dataset``, after its first use by a user who did not build it was verified.

    Raises:
        CorruptCacheError: it fails verification; not rebuilt over: its builder must know.
    """
    try:
        with tree.root.subdir(dataset.path.name) as directory:
            verify_first_use(directory, dataset.manifest)
    except BaseException:
        dataset.close()
        raise
    return dataset


def _explain(names: CacheRoot, subset: str, key: CacheKey, items: Sequence[Any]) -> None:
    """Log why ``subset`` missed; a neighbour that cannot be read never fails a build."""
    if not logger.isEnabledFor(logging.INFO):
        return
    try:
        logger.info("%s", explain_miss(names, subset, key, items))
    except Exception as error:  # noqa: BLE001 (an explanation is never worth a failed build)
        logger.debug("cannot explain the miss of %s: %r", subset, error)


def prepare_tree(path: Path, damage: CorruptCacheError | None) -> CacheTree:
    """Open (creating) the cache directory for a build, or say exactly why it cannot be."""
    try:
        tree = CacheTree.open(path, create=True)
        if not os.access(tree.path, os.W_OK | os.X_OK):
            tree.close()
            raise CacheDirError(
                f"cache directory {tree.path} is not writable and holds no usable cache to "
                "read. Build the cache where you can write, or set cache_dir / SHARDCACHE_DIR"
            )
    except CacheDirError as error:
        if damage is None:
            raise
        # Name the damaged file, not only the directory that keeps us from rebuilding it.
        raise CacheDirError(f"{damage}; it cannot be rebuilt: {error}") from damage
    ensure_tagged(tree.root)
    return tree


def _clear_the_way(tree: CacheTree, path: Path, damage: CorruptCacheError | None) -> None:
    """Remove ``path`` (a damaged cache, or a leftover under the cache's name) if it is ours.

    Raises:
        CacheDirError: it is not shardcache's, or cannot be removed.
    """
    if not is_ours(tree.root, path):
        raise CacheDirError(
            f"{path} is in the way of the cache to build, and shardcache did not make it "
            "(no manifest or build lock of its own): move it away or remove it"
        )
    try:
        discard(tree, path)
    except OSError as removal:
        if damage is not None:
            raise damage from removal
        raise


def open_or_clear(tree: CacheTree, key: CacheKey, name: str) -> CacheDataset | None:
    """Under ``key``'s build lock: the cache another process published meanwhile, or None.

    When None, what stands in the way of a build is gone: a damaged cache, a directory of
    the cache's name without a valid manifest, the trash of an interrupted removal.
    """
    existing = tree.names.find(key.digest)
    if existing is not None:
        try:
            dataset = _open_checked(tree, existing, key)
        except CorruptCacheError as error:
            logger.warning("discarding damaged cache %s: %s", existing.name, error)
            _clear_the_way(tree, existing, error)
        else:
            return _verified(tree, dataset)
    if tree.root.exists(name):  # a directory of that name without a valid manifest
        _clear_the_way(tree, tree.path / name, None)
    empty_trash(tree)  # what a process killed inside `discard` left behind
    return None


def _build_under_lock(
    tree: CacheTree,
    key: CacheKey,
    subset: str,
    items: Sequence[Any],
    loader: RawDataLoader,
    *,
    parallel: int,
    options: ShardOptions,
    lock_timeout: float,
    transforms: Sequence[Transform],
) -> CacheDataset:
    """Take ``key``'s build lock, then open what another process built meanwhile, or build."""
    name = tree.names.cache_name(subset, key.digest)
    with BuildLock(tree.names.lock(key.digest), name, lock_timeout) as lock:
        existing = open_or_clear(tree, key, name)
        if existing is not None:
            return existing
        with tree.locks() as locks:
            end_abandoned_builds(locks, key.digest, keep=None, timeout=lock_timeout, name=name)
        path = build(
            tree=tree,
            name=name,
            subset=subset,
            items=items,
            loader=loader,
            key=key,
            lock=lock,
            parallel=parallel,
            options=options,
            transforms=transforms,
        )
    with contextlib.suppress(OSError):
        os.rmdir(STAGING_DIR, dir_fd=tree.root.fd)  # tidy when no other build is staged
    return _open_checked(tree, path, key)


def _open_published(
    path: Path, subset: str, key: CacheKey, items: Sequence[Any]
) -> tuple[CacheDataset | None, CorruptCacheError | None]:
    """The published cache, opened without the lock and without creating anything.

    Returns ``(dataset, None)`` on a hit, ``(None, None)`` on a miss (explained in the log),
    and ``(None, damage)`` when the cache is damaged and must be rebuilt.
    """
    try:
        tree = CacheTree.open(path)
    except (FileNotFoundError, WrongKindError):  # made, or refused with the reason, later
        _explain(CacheRoot(path), subset, key, items)
        return None, None
    with tree:
        found = tree.names.find(key.digest)
        try:
            opened = None if found is None else _open_checked(tree, found, key)
        except CorruptCacheError as error:
            name = tree.names.cache_name(subset, key.digest)
            logger.warning("cache %s is damaged and will be rebuilt: %s", name, error)
            return None, error
        if opened is None:
            _explain(tree.names, subset, key, items)
            return None, None
        if os.access(tree.path, os.W_OK):  # tag what older versions built
            ensure_tagged(tree.root, quiet=True)
        return _verified(tree, opened), None


def ensure_cache(
    cache_dir: str | os.PathLike[str],
    subset: str,
    items: Sequence[Any],
    loader: RawDataLoader,
    *,
    parallel: int = -1,
    shard_bytes: int | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    narrow: bool = True,
    transforms: Sequence[Transform] = (),
    key: CacheKey | None = None,
) -> CacheDataset:
    """Open ``subset``'s cache in ``cache_dir``, building it under the key's lock if needed.

    A published cache is opened without the lock (so a read-only cache directory works);
    a damaged one is discarded and rebuilt, or, when it cannot be removed, refused with an
    error naming the file.

    Args:
        cache_dir: the cache directory (a relative one is made absolute now).
        subset: the subset's name (not part of the key: two subsets with the same items
            share a cache).
        items: the subset's split items, JSON values.
        loader: the raw data loader.
        parallel: decoding processes, as in `CachingDataModule`.
        shard_bytes: the shard size target (None: automatic).
        narrow: store float tensors as 8- or 16-bit integers where that is exact.
        lock_timeout: seconds to wait for another process's build of the same cache.
        transforms: applied to each sample's tensors before it is stored (as model
            transforms are, see `shardcache.core.transforms`); part of the key.
        key: ``cache_key(subset, items, loader, transforms)`` when the caller computed
            it already (a DataModule computes it once, so that a loader that sets an
            attribute while decoding keeps its key).
    """
    options = ShardOptions(target_bytes=shard_bytes, narrowing=narrow)
    path = Path(cache_dir).absolute()  # a str too: scripts without Lightning pass one
    if key is None:
        key = cache_key(subset, items, loader, transforms)
    opened, damage = _open_published(path, subset, key, items)
    if opened is not None:
        return opened
    # Another process may have built it while we waited for the lock: checked under it.
    with prepare_tree(path, damage) as tree:
        return _build_under_lock(
            tree,
            key,
            subset,
            items,
            loader,
            parallel=parallel,
            options=options,
            lock_timeout=lock_timeout,
            transforms=transforms,
        )
