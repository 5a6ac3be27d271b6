"""Decode split items with ``parallel`` processes, exactly once each, in order.

Used by the memory tier's load and the disk tier's build. A failing item does not stop the
run: every item is decoded, then one `BadSamplesError` lists the failures, so a user fixes
all of them in one go.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .errors import BadSamplesError
from .samples import check_sample, check_storable, describe
from .types import RawDataLoader
from .workers import num_workers, worker_context

logger = logging.getLogger(__name__)

MAX_REPORTED_FAILURES = 20
"""Failures listed in a `BadSamplesError` message; the count covers all of them."""


@dataclass(frozen=True)
class Decoded:
    """One decoded item: its position in the subset, the sample and its label."""

    index: int
    tensor: torch.Tensor
    metadata: dict[str, Any]
    label: int | None


@dataclass(frozen=True)
class _Failure:
    index: int
    message: str


def read_label(loader: RawDataLoader, item: Any) -> int | None:
    """``loader.label(item)`` as an int, or None when the loader has no integer labels."""
    label = getattr(loader, "label", None)
    if label is None:
        return None
    try:
        return operator.index(label(item))
    except TypeError:
        return None


class _DecodingDataset(Dataset[Decoded | _Failure]):
    """Decodes and checks one item per index; failures come back as values, not raised."""

    def __init__(
        self,
        subset: str,
        items: Sequence[Any],
        indices: Sequence[int],
        loader: RawDataLoader,
        storable: bool,
    ) -> None:
        self.subset = subset
        self.items = items
        self.indices = indices
        self.loader = loader
        self.storable = storable

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> Decoded | _Failure:
        index = self.indices[position]
        item = self.items[index]
        where = {"subset": self.subset, "index": index, "item": item}
        try:
            tensor, metadata = check_sample(self.loader.sample(item), **where)
            if self.storable:
                check_storable(tensor, metadata, **where)
            label = read_label(self.loader, item)
        except Exception as error:  # noqa: BLE001 (reported with its item once all are decoded)
            message = str(error)
            if not message.startswith(f"{self.subset}["):
                message = f"{describe(self.subset, index, item)}: {type(error).__name__}: {error}"
            return _Failure(index, message)
        return Decoded(index, tensor, metadata, label)


def _as_is(value: Any) -> Any:
    """With ``batch_size=None`` the DataLoader passes single results: keep them whole."""
    return value


def decode(
    subset: str,
    items: Sequence[Any],
    loader: RawDataLoader,
    *,
    indices: Sequence[int] | None = None,
    parallel: int = -1,
    storable: bool = False,
) -> Iterator[Decoded]:
    """Yield the decoded ``items[i]`` for each ``i`` in ``indices`` (default: all), in order.

    Args:
        subset: the subset's name, for messages and the progress bar.
        items: the subset's split items.
        loader: the raw data loader.
        indices: which items to decode; each is decoded exactly once.
        parallel: worker processes, as in `CachingDataModule`.
        storable: also check that metadata can be stored on disk.

    Raises:
        BadSamplesError: after the last item, when any item failed.
    """
    chosen = range(len(items)) if indices is None else indices
    workers = num_workers(parallel)
    dataset = _DecodingDataset(subset, items, chosen, loader, storable)
    batches = DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        collate_fn=_as_is,
        multiprocessing_context=worker_context(workers),
        prefetch_factor=4 if workers else None,
    )
    failures: list[_Failure] = []
    with tqdm(total=len(chosen), desc=f"decoding {subset}", unit="sample", disable=None) as bar:
        for result in batches:
            bar.update()
            if isinstance(result, _Failure):
                failures.append(result)
                logger.debug("%s", result.message)
                continue
            yield result
    if failures:
        listed = [failure.message for failure in failures[:MAX_REPORTED_FAILURES]]
        more = len(failures) - len(listed)
        lines = "\n  ".join(listed + ([f"... and {more} more"] if more else []))
        raise BadSamplesError(
            f"{len(failures)} of {len(items)} items of subset {subset!r} could not be "
            f"decoded:\n  {lines}",
            failures=tuple(listed),
        )
