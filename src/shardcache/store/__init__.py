"""The persistent tier, usable without Lightning: keys, shards, manifests, a Dataset.

>>> from shardcache.store import CacheDataset, ensure_cache
>>> dataset = ensure_cache(cache_dir, "train", items, loader)   # builds once, ever
>>> tensor, metadata = dataset[0]                                 # a zero-copy view

One module per job: `layout` (every name in a cache directory), `fs` (the one way into
it: no symlink followed, no FIFO waited on), `tree` (a cache directory opened for use),
`trust` (whose entries are used; team directories), `sharing`, `tagging` (CACHEDIR.TAG),
`identity` and `key`, `format` (the manifest), `header` and `shardfile` (shard files read
and written), `options`, `writer`, `reader`, `locking` (build locks, leases), `removal`,
`verification`, `usage`, `inventory` (and `is_ours`), `pruning`, `explain`, `atomic`,
`cache` (open or build), and `slices` and `cooperative` (several ranks of a job building
one cache, each a slice). The names below are imported on first use, so that the command
line, which needs only the inventory, starts without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cache import ensure_cache
    from .format import FORMAT_VERSION, Manifest, ShardInfo
    from .key import CacheKey, cache_key, loader_identity
    from .layout import CacheRoot, resolve_cache_dir
    from .reader import CacheDataset
    from .removal import discard

_HOMES = {
    "FORMAT_VERSION": "format",
    "CacheDataset": "reader",
    "CacheKey": "key",
    "CacheRoot": "layout",
    "Manifest": "format",
    "ShardInfo": "format",
    "cache_key": "key",
    "discard": "removal",
    "ensure_cache": "cache",
    "loader_identity": "key",
    "resolve_cache_dir": "layout",
}

__all__ = [
    "FORMAT_VERSION",
    "CacheDataset",
    "CacheKey",
    "CacheRoot",
    "Manifest",
    "ShardInfo",
    "cache_key",
    "discard",
    "ensure_cache",
    "loader_identity",
    "resolve_cache_dir",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'shardcache.store' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
