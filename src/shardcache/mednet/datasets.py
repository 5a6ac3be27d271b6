"""mednet ``Dataset``s on shardcache's tiers: a subset's, concatenated ones, ``CachedDataset``."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from mednet.data.datamodule import ConcatDataset as _MednetConcatDataset
from mednet.data.typing import Dataset as _MednetDataset

from ..core.types import RawDataLoader, Sample, SampleDataset
from ..serving.served import fetch_batch
from ..tiers import Subset, TierOptions, make_tier


class TierDataset(_MednetDataset):
    """One subset's samples from a shardcache tier, as a mednet ``Dataset``.

    ``targets()`` reads ``raw_data_loader.target(item)`` for each item, without decoding:
    mednet's loss balancing uses it rather than iterate the whole subset.
    """

    def __init__(
        self, dataset: SampleDataset, items: Sequence[Any], loader: RawDataLoader, *, lazy: bool
    ) -> None:
        self.dataset = dataset
        self.items = items
        self.loader = loader
        self.lazy = lazy  # batches fetched for our BatchCollator may hold narrow tensors

    def targets(self) -> list[torch.Tensor]:
        """Every item's target, from ``raw_data_loader.target``."""
        return [self.loader.target(item) for item in self.items]  # type: ignore[attr-defined]

    def __getitem__(self, index: int) -> Sample:
        return self.dataset[index]

    def __getitems__(self, indices: Sequence[int]) -> list[Sample]:
        """A batch's samples; narrow stored tensors stay narrow for `BatchCollator`."""
        return fetch_batch(self.dataset, indices, lazy=self.lazy, read=self.dataset.__getitem__)

    @property
    def will_need(self) -> Callable[[Sequence[int]], None] | None:
        """The tier's hint for samples read soon (`CacheDataset.will_need`), if it takes any."""
        return getattr(self.dataset, "will_need", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[Sample]:
        for index in range(len(self)):
            yield self[index]

    def close(self) -> None:
        """Release the tier dataset (mappings, leases)."""
        self.dataset.close()


class TierConcatDataset(_MednetConcatDataset):
    """mednet's ``ConcatDataset`` of `TierDataset`s (a subset from several databases).

    A batch is fetched, and hinted, from each part at once: its samples in one
    ``__getitems__`` per part (narrow tensors left narrow, the read-ahead of a cold batch),
    not one ``[index]`` each. Relies on mednet 2.1's ``_datasets`` and ``_indices`` (index
    to ``(part, index in part)``); the ``mednet`` extra pins mednet below 2.2.
    """

    _datasets: Sequence[TierDataset]

    def _by_part(self, indices: Sequence[int]) -> dict[int, tuple[list[int], list[int]]]:
        """Part to (positions in ``indices``, indices within the part)."""
        parts: dict[int, tuple[list[int], list[int]]] = {}
        for position, index in enumerate(indices):
            part, inner = self._indices[index]
            positions, inners = parts.setdefault(part, ([], []))
            positions.append(position)
            inners.append(inner)
        return parts

    def __getitems__(self, indices: Sequence[int]) -> list[Sample]:
        """A batch's samples, in order."""
        samples: dict[int, Sample] = {}
        for part, (positions, inners) in self._by_part(indices).items():
            fetched = self._datasets[part].__getitems__(inners)
            samples.update(zip(positions, fetched, strict=True))
        return [samples[position] for position in range(len(indices))]

    @property
    def will_need(self) -> Callable[[Sequence[int]], None] | None:
        """A hint for samples read soon, to each part that takes hints; None if none does."""
        if all(part.will_need is None for part in self._datasets):
            return None
        return self._will_need

    def _will_need(self, indices: Sequence[int]) -> None:
        try:
            parts = self._by_part(indices)
        except (IndexError, TypeError):
            return  # a hint never raises: the read reports a bad index
        for part, (_, inners) in parts.items():
            hint = self._datasets[part].will_need
            if hint is not None:
                hint(inners)


class CachedDataset(_MednetDataset):
    """mednet's ``CachedDataset`` (samples decoded into memory at construction) on the memory tier.

    The same constructor; decoding runs in ``parallel`` DataLoader workers instead of loky
    processes, and model ``transforms`` apply to each ``tv_tensors`` value, before caching.
    """

    def __init__(
        self,
        raw_dataset: Sequence[Any],
        loader: RawDataLoader,
        transforms: Sequence[Any] = (),
        parallel: int = -1,
        disable_pbar: bool = False,  # noqa: ARG002 (mednet's; tqdm hides itself off a terminal)
    ) -> None:
        subset = Subset("dataset", raw_dataset, loader, parallel, tuple(transforms))
        self._dataset = make_tier("memory", TierOptions()).open(subset)

    def targets(self) -> list[torch.Tensor]:
        """Every sample's ``target``, as mednet's CachedDataset reads them."""
        return [self[index]["target"] for index in range(len(self))]

    def __getitem__(self, key: int) -> Any:
        return self._dataset[key]

    def __len__(self) -> int:
        return len(self._dataset)

    def __iter__(self) -> Iterator[Sample]:
        for index in range(len(self)):
            yield self[index]
