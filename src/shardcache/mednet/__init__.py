"""mednet 2.x's data modules on shardcache's tiers: a one-line switch in a mednet config.

::

    # from mednet.data.datamodule import CachingDataModule
    from shardcache.mednet import CachingDataModule

    datamodule = CachingDataModule(
        JSONDatabaseSplit(path), RawDataLoader(),
        database_name="montgomery", split_name="default", task="classification",
        num_classes=1,
        cache="disk",  # optional: without it, mednet's cache_samples decides (memory/none)
    )

`CachingDataModule` and `ConcatDataModule` subclass mednet's classes of the same names, so
mednet's scripts, models and ``isinstance`` checks see mednet's data modules: the same
constructor (keywords after the split and loader), attributes (``cache_samples``,
``parallel``, ``batch_size``, ``model_transforms``... read when a subset is set up or a
loader is made), stages (predict serves every subset; validation falls back to ``train``;
``teardown`` keeps the datasets, as mednet does), DataLoaders and log lines. What changes is
where samples come from: the tier named by ``cache`` (``"none"``, ``"memory"``, ``"disk"``;
an explicit ``cache`` wins over ``cache_samples``, which mednet's scripts always assign).
``model_transforms`` are applied before caching, as mednet does (to each ``tv_tensors``
value of a sample); the disk tier's key includes them, so a changed transform is a new
cache. With mednet's default ``collate_fn``, batches are assembled by `BatchCollator`:
the same batches as ``default_collate``, in reused buffers. On the disk tier, mednet's
loaders become `LookaheadLoader`s, which hint the batches they draw to the disk early.

mednet is an optional dependency: ``pip install "shardcache[mednet]"``.
"""

from __future__ import annotations

try:
    import mednet.data.datamodule  # noqa: F401 (fail here, with the remedy, without mednet)
except ImportError as error:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "shardcache.mednet needs mednet 2.1: pip install 'shardcache[mednet]'"
    ) from error

from .datamodules import CachingDataModule, ConcatDataModule
from .datasets import CachedDataset, TierConcatDataset, TierDataset

__all__ = [
    "CachedDataset",
    "CachingDataModule",
    "ConcatDataModule",
    "TierConcatDataset",
    "TierDataset",
]
