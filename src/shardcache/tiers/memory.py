"""The ``memory`` tier: every sample decoded once per process and kept in RAM."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from ..core.decoding import decode
from ..core.samples import fresh_metadata
from ..core.types import RawDataLoader, Sample
from .base import Subset, TierOptions


def _private(tensor: torch.Tensor) -> torch.Tensor:
    """A copy in ordinary memory of a tensor that a worker sent through shared memory.

    Keeping thousands of shared-memory segments would exhaust file mappings
    (vm.max_map_count) and pin /dev/shm space.
    """
    shared: bool = tensor.is_shared()  # type: ignore[no-untyped-call]
    return tensor.clone() if shared else tensor


class MemoryDataset(Dataset[Sample]):
    """Samples decoded once and kept in RAM."""

    def __init__(self, samples: list[Sample], labels: list[int | None]) -> None:
        self.samples = samples
        self._labels = labels

    @classmethod
    def load(
        cls, subset: str, items: Sequence[Any], loader: RawDataLoader, *, parallel: int = -1
    ) -> MemoryDataset:
        """Decode every item exactly once, with ``parallel`` processes."""
        samples: list[Sample] = []
        labels: list[int | None] = []
        for decoded in decode(subset, items, loader, parallel=parallel):
            metadata = {
                name: _private(value) if isinstance(value, torch.Tensor) else value
                for name, value in decoded.metadata.items()
            }
            samples.append((_private(decoded.tensor), metadata))
            labels.append(decoded.label)
        return cls(samples, labels)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        tensor, metadata = self.samples[index]
        return tensor, fresh_metadata(metadata)

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
            subset.name, subset.items, subset.loader, parallel=subset.parallel
        )
