"""The ``disk`` tier: decoded once, ever, into memory-mapped safetensors shards."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core import settings
from ..core.types import RawDataLoader
from ..store.cache import ensure_cache
from ..store.key import CacheKey, cache_key
from ..store.reader import CacheDataset
from .base import Subset, TierOptions


class DiskTier:
    """Builds a missing cache in `prepare`; every process maps it in `open`.

    The cache directory is resolved once (an absolute path: a later ``os.chdir`` changes
    nothing), and each subset's key is computed once: a loader that sets an attribute
    while decoding in this process (``parallel=-1``) would otherwise reach `open` with
    another key than `prepare` built.
    """

    def __init__(self, options: TierOptions) -> None:
        self.options = options
        self._cache_dir: Path | None = None
        # Per subset name: the items and loader the key was computed from (held, so that
        # their ids stay theirs), and the key.
        self._keys: dict[str, tuple[Sequence[Any], RawDataLoader, tuple[Any, ...], CacheKey]] = {}

    def cache_dir(self) -> Path:
        """The cache directory, resolved on first use (``$SHARDCACHE_DIR`` read then)."""
        if self._cache_dir is None:
            self._cache_dir = settings.cache_dir(self.options.cache_dir).absolute()
        return self._cache_dir

    def key(self, subset: Subset) -> CacheKey:
        """``subset``'s cache key, computed on first use for these items, loader, transforms."""
        known = self._keys.get(subset.name)
        if (
            known is not None
            and known[0] is subset.items
            and known[1] is subset.loader
            and len(known[2]) == len(subset.transforms)
            and all(a is b for a, b in zip(known[2], subset.transforms, strict=True))
        ):
            return known[3]
        key = cache_key(subset.name, subset.items, subset.loader, subset.transforms)
        self._keys[subset.name] = (subset.items, subset.loader, subset.transforms, key)
        return key

    def _ensure(self, subset: Subset) -> CacheDataset:
        return ensure_cache(
            self.cache_dir(),
            subset.name,
            subset.items,
            subset.loader,
            parallel=subset.parallel,
            shard_bytes=self.options.shard_bytes,
            lock_timeout=self.options.lock_timeout,
            narrow=self.options.narrow,
            transforms=subset.transforms,
            key=self.key(subset),
        )

    def prepare(self, subset: Subset) -> None:
        """Build ``subset``'s cache unless it exists (Lightning runs this once per node)."""
        self._ensure(subset).close()

    def open(self, subset: Subset) -> CacheDataset:
        """Map ``subset``'s cache; a process that finds none builds it (under the lock)."""
        return self._ensure(subset)
