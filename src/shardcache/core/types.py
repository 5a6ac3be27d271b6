"""Types shared by every layer: samples, splits, raw loaders, transforms."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeAlias, runtime_checkable

import torch

Sample: TypeAlias = tuple[torch.Tensor, dict[str, Any]] | dict[str, Any]
"""What every dataset serves: a ``(tensor, metadata)`` pair, or a dict of tensors and JSON
values (see `shardcache.core.samples` for what a sample may hold)."""

DatabaseSplit: TypeAlias = Mapping[str, Sequence[Any]]
"""Subset name ("train", "validation", "test", "monitor-*") to JSON-like split items."""

Transform: TypeAlias = Callable[[torch.Tensor], torch.Tensor]
"""A model transform, applied after loading and never cached."""


@runtime_checkable
class RawDataLoader(Protocol):
    """Decodes one split item into a sample.

    Optional methods: ``label(item) -> int`` (the class, without decoding pixels), else
    ``target(item) -> Tensor`` (mednet's: a one-hot or scalar target); ``fingerprint() ->
    str`` (the loader's identity in cache keys, see `shardcache.store.key`).
    """

    def sample(self, item: Any) -> Sample:
        """Decode ``item`` into a sample."""
        ...


class SampleDataset(Protocol):
    """What every tier serves: a map-style dataset with labels, that can be closed."""

    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> Sample: ...
    def labels(self) -> list[int | None]:
        """Every sample's label, without decoding pixels."""
        ...

    def close(self) -> None:
        """Release what the dataset holds (mappings, leases); served samples stay valid."""
        ...
