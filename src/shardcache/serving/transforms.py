"""Model transforms, applied to a private copy of each served sample: never to a cache."""

from __future__ import annotations

from collections.abc import Sequence

from torch.utils.data import Dataset

from ..core.types import Sample, SampleDataset, Transform


class TransformedDataset(Dataset[Sample]):
    """Serves ``dataset``'s samples after ``transforms``, applied in order to a copy."""

    def __init__(self, dataset: SampleDataset, transforms: Sequence[Transform]) -> None:
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

    def close(self) -> None:
        """Close the wrapped dataset."""
        self.dataset.close()
