"""The public home of shardcache's errors (they live in `shardcache.core.errors`)."""

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

__all__ = [
    "BadSamplesError",
    "CacheDirError",
    "CacheError",
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
]
