"""The dataset a DataModule's DataLoader reads: model transforms, and narrow data left narrow."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from torch.utils.data import Dataset

from ..core.transforms import transform_sample
from ..core.types import Sample, SampleDataset, Transform


def fetch_batch(
    dataset: SampleDataset,
    indices: Iterable[int],
    *,
    lazy: bool,
    read: Callable[[int], Sample],
) -> list[Sample]:
    """A batch's samples from a tier's ``dataset``, as a DataLoader's ``__getitems__`` wants them.

    The disk tier is asked for the batch's bytes together first (``prefetch``); with
    ``lazy``, a tier that stores tensors narrow serves them as `Narrow` (``lazy_sample``),
    for `BatchCollator` to widen straight into the batch buffer; otherwise ``read(index)``.
    """
    indices = list(indices)  # read twice (a one-shot iterable would come back empty)
    prefetch = getattr(dataset, "prefetch", None)
    if prefetch is not None:
        prefetch(indices)
    lazy_sample = getattr(dataset, "lazy_sample", None) if lazy else None
    if lazy_sample is not None:
        return [lazy_sample(index) for index in indices]
    return [read(index) for index in indices]


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
        return fetch_batch(self.dataset, indices, lazy=not self.transforms, read=self.__getitem__)

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
