"""Every error shardcache raises, rooted in the builtins that old ``except`` clauses expect.

::

    ShardCacheError(Exception)
    ├── ConfigurationError(ValueError)        a setting is invalid (tier, chunking, parallel)
    ├── SplitError(ValueError)                a subset is missing, empty or not hashable
    ├── FingerprintError(TypeError)           a raw loader cannot be given a cache key
    ├── SampleError(TypeError)                a raw loader returned something unusable
    │   └── BadSamplesError                   a build's report of every failing item
    └── CacheError                            the persistent tier cannot be used as is
        ├── CorruptCacheError                 a shard or manifest fails a check
        ├── FormatVersionError                written by an incompatible format version
        ├── CacheDirError(OSError)            the cache directory cannot be used
        ├── InsufficientSpaceError(OSError)   not enough free space for a build
        ├── LockTimeoutError(TimeoutError)    another process held a build lock too long
        └── PeerFailedError(RuntimeError)     a rank of a cooperative build died or failed

Each class is constructible from one message string, so a DataLoader worker's exception is
rebuilt in the parent with its own type (``torch/_utils.py::ExceptionWrapper.reraise``);
details live in keyword-only attributes that pickling keeps.
"""

from __future__ import annotations

from pathlib import Path


class ShardCacheError(Exception):
    """Base class of every shardcache error."""


class ConfigurationError(ShardCacheError, ValueError):
    """A DataModule or store setting is invalid."""


class SplitError(ShardCacheError, ValueError):
    """A subset of the database split is missing, empty, or cannot be hashed."""


class FingerprintError(ShardCacheError, TypeError):
    """A raw data loader cannot be turned into a stable cache key."""


class SampleError(ShardCacheError, TypeError):
    """A raw data loader returned a sample that cannot be served or stored."""

    def __init__(
        self,
        message: str,
        *,
        subset: str | None = None,
        index: int | None = None,
        item: object = None,
    ) -> None:
        super().__init__(message)
        self.subset = subset
        self.index = index
        self.item = item


class BadSamplesError(SampleError):
    """A build decoded every item and some failed; the message lists them (bounded)."""

    def __init__(self, message: str, *, failures: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.failures = failures


class CacheError(ShardCacheError):
    """The persistent cache cannot be used as it is."""


class CorruptCacheError(CacheError):
    """A published cache fails an integrity check; ``path`` names the file at fault."""

    def __init__(self, message: str, *, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


class FormatVersionError(CorruptCacheError):
    """A cache was written in a format version this shardcache does not read."""


class CacheDirError(CacheError, OSError):
    """The cache directory is missing, not a directory, or not writable when it must be."""


class InsufficientSpaceError(CacheError, OSError):
    """The cache directory's filesystem has too little free space for a build."""


class LockTimeoutError(CacheError, TimeoutError):
    """Another process held a cache's build lock past our deadline."""


class PeerFailedError(CacheError, RuntimeError):
    """Another rank of this job stopped or failed during a cooperative build of a cache.

    Every rank then gives up (a DDP job with a dead rank cannot train anyway); the shards
    already written stay in the staging directory, and the next run resumes from them.
    ``rank`` is the rank at fault, when known. A `RuntimeError`, as torch's own errors for
    a dead peer are.
    """

    def __init__(self, message: str, *, rank: int | None = None) -> None:
        super().__init__(message)
        self.rank = rank
