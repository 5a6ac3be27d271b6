"""`CachingDataModule`: Lightning glue that picks datasets, samplers and loader settings."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from os import PathLike
from typing import Literal, get_args

import lightning
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .batching import BatchCollator
from .datasets import LabelledDataset, MemoryDataset, RawDataset, TransformedDataset
from .errors import ConfigurationError, SplitError
from .sampler import balanced_sampler
from .store import CacheDataset, ensure_cache, resolve_cache_dir
from .store.lock import DEFAULT_LOCK_TIMEOUT
from .typing import DatabaseSplit, RawDataLoader, Sample, Transform
from .workers import num_workers, worker_context

logger = logging.getLogger(__name__)

CacheTier = Literal["none", "memory", "disk"]
TIERS: tuple[str, ...] = get_args(CacheTier)
STAGES = ("fit", "validate", "test", "predict")


class CachingDataModule(lightning.LightningDataModule):
    """Serve a database split through one of three cache tiers.

    Args:
        database_split: subset name to split items (JSON-like values, e.g. ``["a.png", 1]``).
            ``train`` is used by ``fit``; ``validation`` and every ``monitor-*`` subset by
            ``fit`` and ``validate``; ``test`` by ``test`` and ``predict``.
        raw_data_loader: ``sample(item) -> (Tensor, dict)`` and ``label(item) -> int``.
        cache_samples: kept from mednet: True means ``cache="memory"`` when ``cache`` is not
            given.
        balance_sampler_by_class: draw training samples so that classes are equally likely
            (with replacement, from ``label(item)``).
        model_transforms: callables applied to a private copy of each sample after loading;
            never cached, so an in-place transform cannot change the next epoch's data.
        batch_size: samples per optimisation step.
        batch_chunk_count: loaders serve batches of ``batch_size // batch_chunk_count``
            samples and the model accumulates gradients; must divide ``batch_size``.
        drop_incomplete_batch: drop the last, smaller training batch.
        parallel: processes for loading and decoding: ``-1`` none (in the main process),
            ``0`` one per CPU, ``n >= 1`` that many. It sets DataLoader workers and the
            processes that fill the memory and disk caches.
        cache: ``"none"`` decodes on every access; ``"memory"`` decodes once per process
            and keeps samples in RAM; ``"disk"`` decodes once, ever, into memory-mapped
            safetensors shards shared by later runs, workers and DDP ranks. Default:
            ``"memory"`` if ``cache_samples`` else ``"none"``; when given, it wins.
        cache_dir: where disk caches live; default ``$SHARDCACHE_DIR``, else the user cache
            directory for "shardcache" (read when the cache is first needed).
        lock_timeout: seconds to wait for another process's build of the same cache.
        shard_bytes: target size of one shard file; default: a 32nd of the split's decoded
            size, between 4 and 64 MiB.
    """

    def __init__(
        self,
        database_split: DatabaseSplit,
        raw_data_loader: RawDataLoader,
        # mednet's positional parameters, kept in order for its users:
        cache_samples: bool = False,
        balance_sampler_by_class: bool = False,
        model_transforms: Sequence[Transform] = (),
        batch_size: int = 1,
        batch_chunk_count: int = 1,
        drop_incomplete_batch: bool = False,
        parallel: int = -1,
        *,
        cache: CacheTier | None = None,
        cache_dir: str | PathLike[str] | None = None,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        shard_bytes: int | None = None,
    ) -> None:
        super().__init__()
        tier = cache if cache is not None else ("memory" if cache_samples else "none")
        if tier not in TIERS:
            raise ConfigurationError(
                f"cache={tier!r} is not a cache tier; valid tiers are {', '.join(TIERS)}"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError(f"batch_size={batch_size!r} must be a positive int")
        if (
            isinstance(batch_chunk_count, bool)
            or not isinstance(batch_chunk_count, int)
            or batch_chunk_count < 1
            or batch_size % batch_chunk_count
        ):
            raise ConfigurationError(
                f"batch_size={batch_size} is not divisible by batch_chunk_count="
                f"{batch_chunk_count}: choose a chunk count that divides the batch size"
            )
        num_workers(parallel)  # validates it
        self.database_split = database_split
        self.raw_data_loader = raw_data_loader
        self.cache_samples = cache_samples
        self.cache: CacheTier = tier
        self.cache_dir = cache_dir
        self.balance_sampler_by_class = balance_sampler_by_class
        self.model_transforms = tuple(model_transforms)
        self.batch_size = batch_size
        self.batch_chunk_count = batch_chunk_count
        self.drop_incomplete_batch = drop_incomplete_batch
        self.parallel = parallel
        self.lock_timeout = lock_timeout
        self.shard_bytes = shard_bytes
        self._datasets: dict[str, LabelledDataset] = {}

    # ---- stages -------------------------------------------------------------------------

    def _subsets_for(self, stage: str) -> list[str]:
        if stage not in STAGES:
            raise ConfigurationError(f"stage {stage!r} is not one of {', '.join(STAGES)}")
        monitors = [name for name in self.database_split if name.startswith("monitor-")]
        required = {
            "fit": ["train"],
            "validate": ["validation"] if not monitors else [],
            "test": ["test"],
            "predict": ["test"],
        }[stage]
        optional = ["validation", *monitors] if stage in {"fit", "validate"} else []
        for name in required:
            if name not in self.database_split:
                raise SplitError(
                    f"setup({stage!r}) needs subset {name!r}; database_split has "
                    f"{', '.join(map(repr, self.database_split)) or 'no subsets'}"
                )
        chosen = required + [name for name in optional if name in self.database_split]
        return list(dict.fromkeys(chosen))

    def _check_items(self, subset: str) -> Sequence[object]:
        items = self.database_split[subset]
        if len(items) == 0:
            raise SplitError(f"subset {subset!r} of database_split is empty")
        return items

    def prepare_data(self) -> None:
        """Build the disk caches of every subset that lacks one. Sets no state.

        Lightning calls it on local rank 0 of each node; the build lock makes concurrent
        jobs and nodes sharing a cache directory safe.
        """
        if self.cache != "disk":
            return
        cache_dir = resolve_cache_dir(self.cache_dir)
        for subset in self.database_split:
            dataset = ensure_cache(
                cache_dir,
                subset,
                self._check_items(subset),
                self.raw_data_loader,
                parallel=self.parallel,
                shard_bytes=self.shard_bytes,
                lock_timeout=self.lock_timeout,
            )
            dataset.close()

    def setup(self, stage: str) -> None:
        """Open (or load) the subsets ``stage`` uses; a disk cache missing here is built."""
        for subset in self._subsets_for(stage):
            if subset not in self._datasets:
                self._datasets[subset] = self._open(subset)

    def _open(self, subset: str) -> LabelledDataset:
        items = self._check_items(subset)
        if self.cache == "none":
            return RawDataset(subset, items, self.raw_data_loader)
        if self.cache == "memory":
            return MemoryDataset.load(subset, items, self.raw_data_loader, parallel=self.parallel)
        return ensure_cache(
            resolve_cache_dir(self.cache_dir),
            subset,
            items,
            self.raw_data_loader,
            parallel=self.parallel,
            shard_bytes=self.shard_bytes,
            lock_timeout=self.lock_timeout,
        )

    def teardown(self, stage: str) -> None:
        """Release the datasets of ``stage`` (and their mappings)."""
        for subset in self._subsets_for(stage):
            dataset = self._datasets.pop(subset, None)
            if isinstance(dataset, CacheDataset):
                dataset.close()

    # ---- loaders ------------------------------------------------------------------------

    def _dataset(self, subset: str) -> LabelledDataset:
        try:
            return self._datasets[subset]
        except KeyError:
            raise ConfigurationError(
                f"subset {subset!r} is not set up: call setup() for a stage that uses it first"
            ) from None

    def _loader(
        self,
        dataset: LabelledDataset,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        sampler: Sampler[int] | None = None,
    ) -> DataLoader[Sample]:
        served: Dataset[Sample] = (
            TransformedDataset(dataset, self.model_transforms) if self.model_transforms else dataset  # type: ignore[assignment]
        )
        workers = num_workers(self.parallel)
        return DataLoader(
            served,
            batch_size=self.batch_size // self.batch_chunk_count,
            shuffle=shuffle,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=workers,
            multiprocessing_context=worker_context(workers),
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=BatchCollator(workers, persistent_workers=workers > 0),
        )

    def train_dataloader(self) -> DataLoader[Sample]:
        """Shuffled (or class-balanced) training batches of the chunk size."""
        dataset = self._dataset("train")
        if self.balance_sampler_by_class:
            sampler = balanced_sampler([dataset.labels()])
            return self._loader(dataset, sampler=sampler, drop_last=self.drop_incomplete_batch)
        return self._loader(dataset, shuffle=True, drop_last=self.drop_incomplete_batch)

    def unshuffled_train_dataloader(self) -> DataLoader[Sample]:
        """The training subset in order, every sample once (e.g. for evaluation)."""
        return self._loader(self._dataset("train"))

    def val_dataloader(self) -> dict[str, DataLoader[Sample]]:
        """``validation`` and every ``monitor-*`` subset, unshuffled."""
        names = [
            name
            for name in self.database_split
            if name == "validation" or name.startswith("monitor-")
        ]
        return {name: self._loader(self._dataset(name)) for name in names}

    def test_dataloader(self) -> dict[str, DataLoader[Sample]]:
        """The ``test`` subset, unshuffled."""
        return {"test": self._loader(self._dataset("test"))}

    def predict_dataloader(self) -> dict[str, DataLoader[Sample]]:
        """The ``test`` subset, unshuffled."""
        return self.test_dataloader()
