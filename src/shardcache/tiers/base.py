"""What a cache tier is: one small protocol, and the values every tier receives."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from typing import Any, Protocol

from ..core.settings import DEFAULT_LOCK_TIMEOUT
from ..core.types import RawDataLoader, SampleDataset, Transform


@dataclass(frozen=True)
class Subset:
    """One subset to serve: its name, its split items, and what decodes them.

    Attributes:
        name: ``train``, ``validation``, ``monitor-*``... (never part of a cache key).
        items: the split items, JSON-like values.
        loader: the raw data loader.
        parallel: processes for decoding: ``-1`` none, ``0`` one per CPU, ``n``.
        transforms: applied to each sample before a tier keeps it (mednet's model
            transforms: resize, to-RGB...; see `shardcache.core.transforms`); the disk
            tier's key includes them.
    """

    name: str
    items: Sequence[Any]
    loader: RawDataLoader
    parallel: int = -1
    transforms: tuple[Transform, ...] = ()


@dataclass(frozen=True)
class TierOptions:
    """Settings of the persistent tier (the others ignore them).

    Attributes:
        cache_dir: where disk caches live (None: ``$SHARDCACHE_DIR``, else the user cache
            directory), resolved when a cache is first needed.
        lock_timeout: seconds to wait for another process's build of the same cache.
        shard_bytes: target size of one shard file (None: automatic).
        narrow: store float tensors as 8- or 16-bit integers where that is exact.
        distributed: every rank of a multi-process job calls `Tier.open_all` at once
            (Lightning's ``setup`` with ``world_size > 1``): the disk tier builds a missing
            cache with every rank that needs it, each decoding a slice.
    """

    cache_dir: str | PathLike[str] | None = None
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    shard_bytes: int | None = None
    narrow: bool = True
    distributed: bool = False


class Tier(Protocol):
    """How one cache tier makes a subset servable."""

    def prepare(self, subset: Subset) -> None:
        """Do the once-per-node work before any process opens ``subset`` (a disk build)."""
        ...

    def open(self, subset: Subset) -> SampleDataset:
        """Make ``subset`` servable in this process; the caller closes the dataset."""
        ...

    def open_all(self, subsets: Sequence[Subset]) -> Sequence[SampleDataset]:
        """`open` each subset; with ``distributed`` options, every rank of the job calls it."""
        ...
