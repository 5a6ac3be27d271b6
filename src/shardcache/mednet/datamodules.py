"""mednet's ``ConcatDataModule`` and ``CachingDataModule``, served by shardcache's tiers."""

from __future__ import annotations

import logging
from os import PathLike
from typing import Any

import mednet.data.datamodule as _mednet
from torch.utils.data import DataLoader, default_collate

from ..core.settings import DEFAULT_LOCK_TIMEOUT
from ..core.workers import num_workers
from ..serving.collate import BatchCollator
from ..serving.lookahead import with_lookahead
from ..tiers import Subset, Tier, TierOptions, check_tier_name, make_tier
from .datasets import TierConcatDataset, TierDataset

logger = logging.getLogger(__name__)

MEDNET_LOG = logging.getLogger("mednet.data.datamodule")
"""mednet's own data-module logger: its command line shows only ``mednet.*`` loggers, and
its tests count the lines a data module logs there."""

TRADE_OFFS = {
    "none": "without caching. Trade-off: CPU RAM usage: less | Disk I/O: more",
    "memory": "into memory (caching). Trade-off: CPU RAM usage: more | Disk I/O: less",
    "disk": (
        "from the disk cache (shardcache: decoded once, memory-mapped). Trade-off: CPU RAM "
        "usage: page cache, shared | Disk I/O: once"
    ),
}


class _TierSelection:
    """The shardcache part of a mednet data module: which tier serves its subsets."""

    cache: str | None
    cache_dir: str | PathLike[str] | None
    lock_timeout: float
    shard_bytes: int | None
    narrow: bool

    # Set by mednet's classes (declared for the type checker).
    splits: Any
    cache_samples: bool
    collate_fn: Any
    parallel: int
    model_transforms: Any
    _datasets: dict[str, Any]

    def _init_tier(
        self,
        cache: str | None,
        cache_dir: str | PathLike[str] | None,
        lock_timeout: float,
        shard_bytes: int | None,
        narrow: bool,
    ) -> None:
        if cache is not None:
            check_tier_name(cache)
        self.cache = cache
        self.cache_dir = cache_dir
        self.lock_timeout = lock_timeout
        self.shard_bytes = shard_bytes
        self.narrow = narrow
        self._made_tier: tuple[tuple[str, TierOptions], Tier] | None = None

    def tier_name(self) -> str:
        """``cache`` when given, else mednet's ``cache_samples`` (True: memory, False: none)."""
        if self.cache is not None:
            return self.cache
        return "memory" if self.cache_samples else "none"

    def _tier(self) -> Tier:
        """The tier, kept while its settings stay (the disk tier keys each subset once)."""
        options = TierOptions(self.cache_dir, self.lock_timeout, self.shard_bytes, self.narrow)
        wanted = (self.tier_name(), options)
        if self._made_tier is None or self._made_tier[0] != wanted:
            self._made_tier = (wanted, make_tier(*wanted))
        return self._made_tier[1]

    def _subsets(self, name: str) -> list[Subset]:
        transforms = tuple(self.model_transforms or ())
        return [
            Subset(name, items, loader, self.parallel, transforms)
            for items, loader in self.splits[name]
        ]

    def prepare_data(self) -> None:
        """Build the disk caches of every subset (once per node; other tiers: nothing).

        mednet's scripts assign ``model_transforms`` before calling this; without them yet,
        nothing can be built (the caches hold transformed samples) and setup builds.
        """
        if self.tier_name() != "disk" or self.model_transforms is None:
            return
        tier = self._tier()
        for name in self.splits:
            for subset in self._subsets(name):
                tier.prepare(subset)

    def _setup_dataset(self, name: str) -> None:
        """Set up subset ``name`` from the tier (mednet's hook, with mednet's log lines)."""
        if self.model_transforms is None:
            raise RuntimeError(
                "Parameter `model_transforms` has not yet been set.  If you do not have model "
                "transforms, then set it to an empty list."
            )
        if name in self._datasets:
            MEDNET_LOG.info("Dataset `%s` is already setup. Not re-instantiating it.", name)
            return
        tier_name = self.tier_name()
        MEDNET_LOG.info("Loading dataset:`%s` %s", name, TRADE_OFFS[tier_name])
        tier = self._tier()
        lazy = self.collate_fn is default_collate  # our BatchCollator will collate
        datasets = [
            TierDataset(tier.open(subset), subset.items, subset.loader, lazy=lazy)
            for subset in self._subsets(name)
        ]
        self._datasets[name] = datasets[0] if len(datasets) == 1 else TierConcatDataset(datasets)

    def _served(self, loader: DataLoader[Any]) -> DataLoader[Any]:
        """``loader`` with `BatchCollator` for mednet's default collate, hinting on the disk tier.

        The same batches as mednet's, in reused buffers; `with_lookahead` makes the loader
        hint the batches it draws when its dataset takes hints.
        """
        if self.collate_fn is default_collate:
            workers = num_workers(self.parallel)
            loader.collate_fn = BatchCollator(workers, persistent_workers=loader.persistent_workers)
        return with_lookahead(loader)

    def train_dataloader(self) -> DataLoader[Any]:
        """Mednet's shuffled training loader."""
        return self._served(super().train_dataloader())  # type: ignore[misc]

    def unshuffled_train_dataloader(self) -> DataLoader[Any]:
        """Mednet's unshuffled training loader."""
        return self._served(super().unshuffled_train_dataloader())  # type: ignore[misc]

    def val_dataloader(self) -> dict[str, DataLoader[Any]]:
        """Mednet's validation loaders (``validation``, or ``train``, and ``monitor-*``)."""
        loaders = super().val_dataloader()  # type: ignore[misc]
        return {name: self._served(loader) for name, loader in loaders.items()}

    def test_dataloader(self) -> dict[str, DataLoader[Any]]:
        """Mednet's test loader."""
        loaders = super().test_dataloader()  # type: ignore[misc]
        return {name: self._served(loader) for name, loader in loaders.items()}

    def predict_dataloader(self) -> dict[str, DataLoader[Any]]:
        """A loader for every subset set up so far, as mednet serves them."""
        loaders = super().predict_dataloader()  # type: ignore[misc]
        return {name: self._served(loader) for name, loader in loaders.items()}


class ConcatDataModule(_TierSelection, _mednet.ConcatDataModule):
    """mednet's ``ConcatDataModule`` on shardcache's tiers.

    Args:
        splits: mednet's: subset name to ``(items, raw_data_loader)`` pairs.
        cache: ``"none"``, ``"memory"`` or ``"disk"``; None: mednet's ``cache_samples``.
        cache_dir: where disk caches live (default: ``$SHARDCACHE_DIR``, else the user
            cache directory).
        lock_timeout: seconds to wait for another process's build of the same cache.
        shard_bytes: the disk tier's shard size target (None: automatic).
        narrow: store 8/16-bit image data loaded as floats narrow, exactly.
        **kwargs: mednet's keywords (``database_name``, ``split_name``, ``task``,
            ``num_classes``, ``collate_fn``, ``cache_samples``, ``batch_size``,
            ``drop_incomplete_batch``, ``parallel``).
    """

    def __init__(
        self,
        splits: Any,
        *,
        cache: str | None = None,
        cache_dir: str | PathLike[str] | None = None,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        shard_bytes: int | None = None,
        narrow: bool = True,
        **kwargs: Any,
    ) -> None:
        self._init_tier(cache, cache_dir, lock_timeout, shard_bytes, narrow)
        super().__init__(splits, **kwargs)


class CachingDataModule(_TierSelection, _mednet.CachingDataModule):
    """mednet's ``CachingDataModule`` (one split, one raw data loader) on shardcache's tiers.

    Args:
        database_split: subset name to split items.
        raw_data_loader: mednet's ``RawDataLoader`` (``sample(item)``, ``target(item)``).
        cache: ``"none"``, ``"memory"`` or ``"disk"``; None: mednet's ``cache_samples``.
        cache_dir: where disk caches live (default: ``$SHARDCACHE_DIR``, else the user
            cache directory).
        lock_timeout: seconds to wait for another process's build of the same cache.
        shard_bytes: the disk tier's shard size target (None: automatic).
        narrow: store 8/16-bit image data loaded as floats narrow, exactly.
        **kwargs: mednet's keywords, as for `ConcatDataModule`.
    """

    def __init__(
        self,
        database_split: Any,
        raw_data_loader: Any,
        *,
        cache: str | None = None,
        cache_dir: str | PathLike[str] | None = None,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        shard_bytes: int | None = None,
        narrow: bool = True,
        **kwargs: Any,
    ) -> None:
        self._init_tier(cache, cache_dir, lock_timeout, shard_bytes, narrow)
        super().__init__(database_split, raw_data_loader, **kwargs)
