"""`CachingDataModule`: Lightning glue that picks datasets, samplers and loader settings."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from os import PathLike
from typing import Any, Literal, get_args

import lightning
import torch
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader, Dataset, Sampler

from .core.errors import ConfigurationError, SplitError
from .core.settings import DEFAULT_LOCK_TIMEOUT
from .core.types import DatabaseSplit, RawDataLoader, Sample, SampleDataset, Transform
from .core.workers import num_workers, worker_context
from .serving.collate import BatchCollator, Widen
from .serving.lookahead import LookaheadLoader
from .serving.sampler import balanced_sampler
from .serving.served import ServedDataset
from .serving.widening import widen_batch
from .tiers import Subset, Tier, TierOptions, check_tier_name, make_tier

logger = logging.getLogger(__name__)

CacheTier = Literal["none", "memory", "disk"]
WIDEN: tuple[str, ...] = get_args(Widen)
STAGES = ("fit", "validate", "test", "predict")


class CachingDataModule(lightning.LightningDataModule):
    """Serve a database split through one of three cache tiers.

    Args:
        database_split: subset name to split items (JSON-like values, e.g. ``["a.png", 1]``).
            ``train`` is used by ``fit``; ``validation`` and every ``monitor-*`` subset by
            ``fit`` and ``validate``; ``test`` by ``test`` and ``predict``.
        raw_data_loader: ``sample(item)`` returns a ``(Tensor, dict)`` pair or a dict of
            tensors and JSON values (see `shardcache.core.samples`); ``label(item) -> int``
            or ``target(item) -> Tensor`` gives its class without decoding.
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
        narrow: let the disk tier store a float tensor as 8- or 16-bit integers when
            every value is exactly ``k / 255``, ``k / 65535`` or an integer (image data
            loaded as floats): served bit for bit as loaded, 2-4x fewer bytes to store,
            read and copy. False stores every tensor as the loader returned it.
        widen: where tensors that the disk tier stores narrow (8- or 16-bit data loaded as
            floats) become floats again: ``"host"`` (in the batch buffer) or ``"device"``
            (after the transfer to the accelerator: 4x less host-to-device traffic; batches
            hold `NarrowBatch` fields until Lightning's ``on_after_batch_transfer``).
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
        narrow: bool = True,
        widen: Widen = "host",
    ) -> None:
        super().__init__()
        tier = check_tier_name(
            cache if cache is not None else "memory" if cache_samples else "none"
        )
        if widen not in WIDEN:
            raise ConfigurationError(f"widen={widen!r}: expected one of {', '.join(WIDEN)}")
        num_workers(parallel)  # validates it
        self.database_split = database_split
        self.raw_data_loader = raw_data_loader
        self.cache_samples = cache_samples
        self.cache: CacheTier = tier  # type: ignore[assignment]
        self.cache_dir = cache_dir
        self.balance_sampler_by_class = balance_sampler_by_class
        self.model_transforms = tuple(model_transforms)
        self.set_chunk_size(batch_size, batch_chunk_count)
        self.drop_incomplete_batch = drop_incomplete_batch
        self.parallel = parallel
        self.lock_timeout = lock_timeout
        self.shard_bytes = shard_bytes
        self.narrow = narrow
        self.widen: Widen = widen
        if widen == "device":
            # An instance attribute, not a method of the class: Lightning would otherwise
            # prefer this DataModule's hook over every model's own, widening or not.
            self.on_after_batch_transfer = self._widen_after_transfer  # type: ignore[method-assign]
        self._datasets: dict[str, SampleDataset] = {}
        # Made now, so that prepare_data sets no state (Lightning runs it on one rank only).
        self._made_tier: tuple[tuple[str, TierOptions], Tier] | None = None
        self._tier()

    def set_chunk_size(self, batch_size: int, batch_chunk_count: int) -> None:
        """Set the batch size and the chunks each batch is served in (kept from mednet).

        Raises:
            ConfigurationError: ``batch_chunk_count`` does not divide ``batch_size``.
        """
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
        self.batch_size = batch_size
        self.batch_chunk_count = batch_chunk_count

    def _widen_after_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """``widen="device"``: narrow batch fields become floats on the device, exactly.

        A model's own ``on_after_batch_transfer`` runs after, on the widened batch.
        """
        widened = widen_batch(batch)
        trainer = getattr(self, "_trainer", None)
        model = None if trainer is None else trainer.lightning_module
        if model is not None and is_overridden("on_after_batch_transfer", model):
            return model.on_after_batch_transfer(widened, dataloader_idx)
        return widened

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

    def _subset(self, name: str) -> Subset:
        items = self.database_split[name]
        if len(items) == 0:
            raise SplitError(f"subset {name!r} of database_split is empty")
        return Subset(name, items, self.raw_data_loader, self.parallel)

    def _job_ranks(self) -> int:
        """Processes of the running Lightning job that sets this DataModule up (else 1)."""
        trainer = self.trainer
        if trainer is None or trainer.state.status != TrainerStatus.RUNNING:
            return 1
        return int(trainer.world_size)

    def _tier(self) -> Tier:
        """The tier, kept: prepare_data and setup share it (a setting changed makes a new one).

        The disk tier resolves the cache directory and computes each subset's key once.
        """
        options = TierOptions(
            self.cache_dir,
            self.lock_timeout,
            self.shard_bytes,
            self.narrow,
            distributed=self._job_ranks() > 1,
        )
        if self._made_tier is None or self._made_tier[0] != (self.cache, options):
            self._made_tier = ((self.cache, options), make_tier(self.cache, options))
        return self._made_tier[1]

    def prepare_data(self) -> None:
        """Prepare every subset (the disk tier builds missing caches); sets no state.

        Lightning calls it on local rank 0 of each node (or of node 0 only, with
        ``prepare_data_per_node=False``) while the other ranks wait. In a job of several
        ranks it does nothing: `setup` builds what is missing, with every rank that needs
        it. Called without a trainer, or by a one-process job, it builds under the cache's
        lock, which makes concurrent jobs and nodes sharing a cache directory safe.
        """
        ranks = self._job_ranks()
        if ranks > 1:
            logger.info("prepare_data: deferred to setup, where the %d ranks build together", ranks)
            return
        tier = self._tier()
        for name in self.database_split:
            tier.prepare(self._subset(name))

    def setup(self, stage: str) -> None:
        """Open the subsets ``stage`` uses (loads the memory tier; maps the disk tier).

        In a Lightning job of several ranks, every rank runs it at once: the ranks that
        miss a disk cache in a directory they share decode a slice of it each, and one of
        them publishes it (see the README, "Multi-GPU and multi-node").
        """
        tier = self._tier()
        # Every rank calls open_all, even with nothing new to open: it may meet the others.
        names = [name for name in self._subsets_for(stage) if name not in self._datasets]
        opened = tier.open_all([self._subset(name) for name in names])
        self._datasets.update(zip(names, opened, strict=True))

    def teardown(self, stage: str) -> None:
        """Close the datasets of ``stage`` (and release their mappings)."""
        for name in self._subsets_for(stage):
            dataset = self._datasets.pop(name, None)
            if dataset is not None:
                dataset.close()

    # ---- loaders ------------------------------------------------------------------------

    def _dataset(self, subset: str) -> SampleDataset:
        try:
            return self._datasets[subset]
        except KeyError:
            raise ConfigurationError(
                f"subset {subset!r} is not set up: call setup() for a stage that uses it first"
            ) from None

    def _loader(
        self,
        dataset: SampleDataset,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        sampler: Sampler[int] | None = None,
    ) -> DataLoader[Sample]:
        workers = num_workers(self.parallel)
        served: Dataset[Sample] = dataset  # type: ignore[assignment]
        if self.model_transforms or hasattr(dataset, "lazy_sample"):
            served = ServedDataset(dataset, self.model_transforms)
        return LookaheadLoader(
            served,
            batch_size=self.batch_size // self.batch_chunk_count,
            shuffle=shuffle,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=workers,
            multiprocessing_context=worker_context(workers),
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=BatchCollator(workers, persistent_workers=workers > 0, widen=self.widen),
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
