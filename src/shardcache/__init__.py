"""shardcache: decode raw training data once, then serve it from RAM or memory-mapped shards.

``CachingDataModule`` is imported on first use, so that ``shardcache.store`` and the CLI
work without importing Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .core.errors import (
    BadSamplesError,
    CacheDirError,
    CacheError,
    ConfigurationError,
    CorruptCacheError,
    FingerprintError,
    FormatVersionError,
    InsufficientSpaceError,
    LockTimeoutError,
    PeerFailedError,
    SampleError,
    ShardCacheError,
    SplitError,
)

if TYPE_CHECKING:
    from .datamodule import CachingDataModule

__all__ = [
    "BadSamplesError",
    "CacheDirError",
    "CacheError",
    "CachingDataModule",
    "ConfigurationError",
    "CorruptCacheError",
    "FingerprintError",
    "FormatVersionError",
    "InsufficientSpaceError",
    "LockTimeoutError",
    "PeerFailedError",
    "SampleError",
    "ShardCacheError",
    "SplitError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name == "CachingDataModule":
        from .datamodule import CachingDataModule

        return CachingDataModule
    raise AttributeError(f"module 'shardcache' has no attribute {name!r}")
