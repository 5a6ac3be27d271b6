"""The persistent tier, usable without Lightning: keys, shards, manifests, a Dataset.

>>> from shardcache.store import CacheDataset, ensure_cache
>>> dataset = ensure_cache(cache_dir, "train", items, loader)   # builds once, ever
>>> tensor, metadata = dataset[0]                                 # a zero-copy view
"""

from .cache import discard, ensure_cache
from .format import FORMAT_VERSION, Manifest, ShardInfo
from .key import CacheKey, cache_key, loader_identity
from .layout import CacheRoot, resolve_cache_dir
from .reader import CacheDataset

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
