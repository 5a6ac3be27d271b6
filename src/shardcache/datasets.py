"""One Dataset per cache tier, all with the same interface: ``len``, ``[i]``, ``labels()``.

The disk tier's dataset is `shardcache.store.CacheDataset`; the others live here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch.utils.data import Dataset

from .decoding import decode, read_label
from .samples import check_sample, describe, fresh_metadata
from .typing import RawDataLoader, Sample, Transform


class LabelledDataset(Protocol):
    """What the DataModule needs of a tier's dataset."""

    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> Sample: ...
    def labels(self) -> list[int | None]:
        """Every sample's label, without decoding pixels."""
        ...


class RawDataset(Dataset[Sample]):
    """The ``none`` tier: the raw loader decodes on every access."""

    def __init__(self, subset: str, items: Sequence[Any], loader: RawDataLoader) -> None:
        self.subset = subset
        self.items = items
        self.loader = loader

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        item = self.items[index]
        try:
            value = self.loader.sample(item)
        except Exception as error:
            # The loader's own exception type, with the item it failed on (Python >= 3.11).
            if hasattr(error, "add_note"):
                error.add_note(f"while decoding {describe(self.subset, index, item)}")
            raise
        return check_sample(value, subset=self.subset, index=index, item=item)

    def labels(self) -> list[int | None]:
        """Labels from ``loader.label(item)``."""
        return [read_label(self.loader, item) for item in self.items]


def _private(tensor: torch.Tensor) -> torch.Tensor:
    """A copy in ordinary memory of a tensor that a worker sent through shared memory.

    Keeping thousands of shared-memory segments would exhaust file mappings
    (vm.max_map_count) and pin /dev/shm space.
    """
    shared: bool = tensor.is_shared()  # type: ignore[no-untyped-call]
    return tensor.clone() if shared else tensor


class MemoryDataset(Dataset[Sample]):
    """The ``memory`` tier: samples decoded once per process and kept in RAM."""

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


class TransformedDataset(Dataset[Sample]):
    """Applies model transforms to a private copy of each sample: never to the cache."""

    def __init__(self, dataset: LabelledDataset, transforms: Sequence[Transform]) -> None:
        self.dataset = dataset
        self.transforms = tuple(transforms)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Sample:
        tensor, metadata = self.dataset[index]
        # A copy, so an in-place transform (x.add_(1)) changes this sample only.
        tensor = tensor.clone()
        for transform in self.transforms:
            tensor = transform(tensor)
        return tensor, metadata

    def labels(self) -> list[int | None]:
        """The wrapped dataset's labels."""
        return self.dataset.labels()
