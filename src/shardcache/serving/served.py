"""The dataset a DataModule's DataLoader reads: model transforms, and narrow data left narrow."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch.utils.data import Dataset

from ..core.transforms import transform_sample
from ..core.types import Sample, SampleDataset, Transform


class ServedDataset(Dataset[Sample]):
    """``dataset``'s samples as a DataLoader with `BatchCollator` should fetch them.

    ``[index]`` serves a sample as the tier does, after ``transforms`` (on a copy). A
    DataLoader fetches whole batches through ``__getitems__``: without transforms, a tier
    that stores tensors narrow (the disk tier) then serves them as `Narrow`, for the
    collator to widen straight into the batch buffer. Other attributes are the wrapped
    dataset's.
    """

    def __init__(self, dataset: SampleDataset, transforms: Sequence[Transform] = ()) -> None:
        self.dataset = dataset
        self.transforms = tuple(transforms)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Sample:
        sample = self.dataset[index]
        return transform_sample(sample, self.transforms) if self.transforms else sample

    def __getitems__(self, indices: Sequence[int]) -> list[Sample]:
        """The samples of one batch (with narrow tensors left narrow when it can)."""
        indices = list(indices)  # read twice below (a one-shot iterable would come back empty)
        prefetch = getattr(self.dataset, "prefetch", None)
        if prefetch is not None:  # the disk tier: the batch's reads overlap
            prefetch(indices)
        lazy = None if self.transforms else getattr(self.dataset, "lazy_sample", None)
        if lazy is not None:
            return [lazy(index) for index in indices]
        return [self[index] for index in indices]

    def __getattr__(self, name: str) -> Any:
        """The wrapped dataset's other attributes (``path``, ``manifest``...)."""
        if name.startswith("__") or name in {"dataset", "transforms"}:  # unpickling
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def labels(self) -> list[int | None]:
        """The wrapped dataset's labels."""
        return self.dataset.labels()

    def close(self) -> None:
        """Close the wrapped dataset."""
        self.dataset.close()
