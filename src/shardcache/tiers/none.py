"""The ``none`` tier: the raw loader decodes every sample on every access."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch.utils.data import Dataset

from ..core.decoding import read_label
from ..core.samples import Where, canonical_sample, describe
from ..core.transforms import transform_sample
from ..core.types import RawDataLoader, Sample, Transform
from .base import Subset, TierOptions


class RawDataset(Dataset[Sample]):
    """Decodes ``items[index]`` with the raw loader on every ``[index]``."""

    def __init__(
        self,
        subset: str,
        items: Sequence[Any],
        loader: RawDataLoader,
        transforms: Sequence[Transform] = (),
    ) -> None:
        self.subset = subset
        self.items = items
        self.loader = loader
        self.transforms = tuple(transforms)

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
        # The same rule as the tiers that store samples: every tier serves the same.
        where = Where(self.subset, index, item)
        sample = canonical_sample(value, where)
        if self.transforms:
            sample = canonical_sample(transform_sample(sample, self.transforms), where)
        return sample

    def labels(self) -> list[int | None]:
        """Labels from ``loader.label(item)`` (or ``target(item)``), without decoding."""
        return [read_label(self.loader, item) for item in self.items]

    def close(self) -> None:
        """Nothing to release."""


class NoneTier:
    """Nothing to prepare; every process decodes on access."""

    def __init__(self, options: TierOptions) -> None:
        self.options = options  # nothing here uses them: every process decodes on its own

    def prepare(self, subset: Subset) -> None:
        """Nothing to do before processes open the subset."""

    def open(self, subset: Subset) -> RawDataset:
        """A dataset that decodes on access."""
        return RawDataset(subset.name, subset.items, subset.loader, subset.transforms)

    def open_all(self, subsets: Sequence[Subset]) -> list[RawDataset]:
        """`open` each subset: every process decodes on its own, with or without peers."""
        return [self.open(subset) for subset in subsets]
