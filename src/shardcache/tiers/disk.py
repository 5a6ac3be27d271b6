"""The ``disk`` tier: decoded once, ever, into memory-mapped safetensors shards."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core import settings
from ..core.types import RawDataLoader
from ..store.cache import ensure_cache
from ..store.cooperative import build_together
from ..store.jobfiles import directory_identity
from ..store.key import CacheKey, cache_key
from ..store.layout import CacheRoot
from ..store.reader import CacheDataset
from ..store.slicebuild import Share
from ..store.teams import new_job_id
from . import distributed
from .base import Subset, TierOptions

logger = logging.getLogger(__name__)


class DiskTier:
    """Builds a missing cache in `prepare`, or with every rank of a job in `open_all`.

    Every process maps the published cache in `open`. The cache directory is resolved
    once (an absolute path: a later ``os.chdir`` changes nothing), and each subset's key is
    computed once: a loader that sets an attribute while decoding in this process
    (``parallel=-1``) would otherwise reach `open` with another key than `prepare` built.
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
        """Build ``subset``'s cache unless it exists (``prepare_data`` of a one-rank job)."""
        self._ensure(subset).close()

    def open(self, subset: Subset) -> CacheDataset:
        """Map ``subset``'s cache; a process that finds none builds it (under the lock)."""
        return self._ensure(subset)

    def open_all(self, subsets: Sequence[Subset]) -> list[CacheDataset]:
        """Map every subset's cache; missing ones are built first.

        With ``options.distributed`` (every rank of a job calls this at once), the ranks
        that miss a cache and share its directory build it together, each decoding a slice
        (`shardcache.store.cooperative`); elsewhere, as `open` does.
        """
        if self.options.distributed and distributed.available():
            self._build_together(subsets)
        opened: list[CacheDataset] = []
        try:
            opened.extend(self.open(subset) for subset in subsets)
        except BaseException:
            for dataset in opened:
                dataset.close()
            raise
        return opened

    def _build_together(self, subsets: Sequence[Subset]) -> None:
        """The exchange, this rank's builds (with its teams, or alone), the final barrier.

        Every build ends before the barrier: a rank that builds alone (its directory is
        its own) must not leave the others waiting in Lightning's next barrier instead,
        whose deadline is the process group's 30 minutes.
        """
        with distributed.Exchange(self.options.lock_timeout) as exchange:
            root = CacheRoot(self.cache_dir())
            by_key: dict[str, Subset] = {}
            for subset in subsets:  # two subsets with the same items share one cache
                by_key.setdefault(self.key(subset).digest, subset)
            missing = [digest for digest in by_key if root.find(digest) is None]
            identity = directory_identity(self.cache_dir()) if missing else None
            mine = distributed.View.mine(identity, missing, new_job_id())
            views = exchange.gather(mine)
            teams = distributed.form_teams(views, mine.rank)
            if teams:
                logger.info(
                    "rank %d builds %s together with ranks %s",
                    mine.rank,
                    ", ".join(root.cache_name(by_key[d].name, d) for d in teams),
                    sorted({member.rank for team in teams.values() for member in team.members}),
                )
            shares = [
                Share(
                    by_key[digest].name,
                    by_key[digest].items,
                    by_key[digest].loader,
                    team,
                    distributed.decoding_processes(by_key[digest].parallel, views, mine.rank),
                    transforms=by_key[digest].transforms,
                    key=self.key(by_key[digest]),
                )
                for digest, team in teams.items()  # in the subsets' order, as on every rank
            ]
            build_together(
                self.cache_dir(),
                shares,
                shard_bytes=self.options.shard_bytes,
                lock_timeout=self.options.lock_timeout,
                narrow=self.options.narrow,
            )
            for digest in missing:  # alone, under the build lock, but before the barrier too
                if digest not in teams:
                    self._ensure(by_key[digest]).close()
            exchange.barrier()
