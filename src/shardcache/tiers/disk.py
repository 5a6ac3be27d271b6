"""The ``disk`` tier: decoded once, ever, into memory-mapped safetensors shards."""

from __future__ import annotations

from ..core import settings
from ..store.cache import ensure_cache
from ..store.reader import CacheDataset
from .base import Subset, TierOptions


class DiskTier:
    """Builds a missing cache in `prepare`; every process maps it in `open`."""

    def __init__(self, options: TierOptions) -> None:
        self.options = options

    def _ensure(self, subset: Subset) -> CacheDataset:
        return ensure_cache(
            settings.cache_dir(self.options.cache_dir),
            subset.name,
            subset.items,
            subset.loader,
            parallel=subset.parallel,
            shard_bytes=self.options.shard_bytes,
            lock_timeout=self.options.lock_timeout,
            narrow=self.options.narrow,
        )

    def prepare(self, subset: Subset) -> None:
        """Build ``subset``'s cache unless it exists (Lightning runs this once per node)."""
        self._ensure(subset).close()

    def open(self, subset: Subset) -> CacheDataset:
        """Map ``subset``'s cache; a process that finds none builds it (under the lock)."""
        return self._ensure(subset)
