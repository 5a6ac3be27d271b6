"""The ``memory`` tier: every sample decoded once per process and kept in RAM."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from ..core.decoding import decode
from ..core.structure import fresh
from ..core.types import RawDataLoader, Sample, Transform
from .base import Subset, TierOptions


def _private(value: Any) -> Any:
    """``value`` with every tensor a worker sent through shared memory copied to ordinary memory.

    Keeping thousands of shared-memory segments would exhaust file mappings
    (vm.max_map_count) and pin /dev/shm space.
    """
    if isinstance(value, torch.Tensor):
        shared: bool = value.is_shared()  # type: ignore[no-untyped-call]
        return value.clone() if shared else value
    if isinstance(value, dict):
        return {key: _private(element) for key, element in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_private(element) for element in value)
    return value


def _as_is(sample: Sample) -> Sample:
    return sample


class MemoryDataset(Dataset[Sample]):
    """Samples decoded once and kept in RAM."""

    def __init__(self, samples: list[Sample], labels: list[int | None]) -> None:
        self.samples = samples
        self._labels = labels

    @classmethod
    def load(
        cls,
        subset: str,
        items: Sequence[Any],
        loader: RawDataLoader,
        *,
        parallel: int = -1,
        transforms: Sequence[Transform] = (),
    ) -> MemoryDataset:
        """Decode every item exactly once, with ``parallel`` processes, then ``transforms``."""
        samples: list[Sample] = []
        labels: list[int | None] = []
        decoded_items = decode(
            subset, items, loader, _as_is, parallel=parallel, transforms=transforms
        )
        for decoded in decoded_items:
            samples.append(_private(decoded.value))
            labels.append(decoded.label)
        return cls(samples, labels)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        served: Sample = fresh(self.samples[index])  # the caller may change the containers
        return served

    def labels(self) -> list[int | None]:
        """Labels recorded at load time."""
        return list(self._labels)

    def close(self) -> None:
        """Nothing to release: the samples go with the dataset."""


class MemoryTier:
    """Nothing to prepare: each process decodes the subset when it opens it."""

    def __init__(self, options: TierOptions) -> None:
        self.options = options  # nothing here uses them: every process decodes on its own

    def prepare(self, subset: Subset) -> None:
        """Nothing to do before processes open the subset."""

    def open(self, subset: Subset) -> MemoryDataset:
        """Decode every item now, with ``subset.parallel`` processes."""
        return MemoryDataset.load(
            subset.name,
            subset.items,
            subset.loader,
            parallel=subset.parallel,
            transforms=subset.transforms,
        )

    def open_all(self, subsets: Sequence[Subset]) -> list[MemoryDataset]:
        """`open` each subset: every process decodes on its own, with or without peers."""
        return [self.open(subset) for subset in subsets]
