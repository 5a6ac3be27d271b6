"""Raw loaders, splits and a tiny model shared by the Foundation acceptance tests.

The loaders live in a module file, not in a test, so that DataLoader workers and the disk
tier's key (which hashes a loader's class source) see them the same way in every process.
Decodes are counted with a file each decode appends one line to (``O_APPEND``), so the
count covers worker processes too. The log path is a private attribute: it is not part of
the disk tier's cache key.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning
import torch

SUBSET_OFFSETS = {"train": 0, "validation": 100, "monitor-train": 200, "test": 300}
"""Each subset's items carry distinct values, so a decode log says which subset it read."""


def make_split(
    sizes: dict[str, int], labels: dict[str, list[int]] | None = None
) -> dict[str, list[list[Any]]]:
    """Items ``[name, label, value]``; the sample of an item is filled with ``value``."""
    split: dict[str, list[list[Any]]] = {}
    for subset, size in sizes.items():
        offset = SUBSET_OFFSETS.get(subset, 400)
        chosen = (labels or {}).get(subset, [i % 2 for i in range(size)])
        split[subset] = [[f"{subset}/{i}", chosen[i], offset + i] for i in range(size)]
    return split


def record_decode(log: str, item: Any) -> None:
    """Append one line; ``O_APPEND`` keeps concurrent appends from several processes whole."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{json.dumps(item)}\n".encode())
    finally:
        os.close(fd)


def decoded(log: str | Path) -> list[Any]:
    """The items decoded, one entry per decode, in every process."""
    path = Path(log)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def decode_counts(log: str | Path) -> Counter[int]:
    """How many times each item (by value) was decoded."""
    return Counter(item[2] for item in decoded(log))


class CountingLoader:
    """``sample([name, label, value])`` is a [1, 2, 2] float tensor of ``value``."""

    shardcache_key_ignores = ("_log",)

    def __init__(self, log: str | Path) -> None:
        self._log = str(log)

    def sample(self, item: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        record_decode(self._log, item)
        name, label, value = item
        return torch.full((1, 2, 2), float(value)), {"name": name, "label": label, "value": value}

    def label(self, item: Any) -> int:
        return int(item[1])


class TextLabelLoader(CountingLoader):
    """A loader whose ``label()`` is no integer: balancing by class cannot use it."""

    def label(self, item: Any) -> Any:
        return f"class-{item[1]}"


class BadLoader(CountingLoader):
    """Returns an unusable sample for the items whose value is in ``bad``.

    ``kind``: ``"list"`` (a list instead of a pair), ``"tensor"`` (a list as the sample
    tensor) or ``"metadata"`` (a list of pairs as metadata).
    """

    def __init__(self, log: str | Path, kind: str, bad: list[int]) -> None:
        super().__init__(log)
        self.kind = kind
        self.bad = bad

    def sample(self, item: Any) -> Any:
        tensor, metadata = super().sample(item)
        if item[2] not in self.bad:
            return tensor, metadata
        if self.kind == "list":
            return [1.0, 2.0, 3.0]
        if self.kind == "tensor":
            return tensor.tolist(), metadata
        return tensor, list(metadata.items())


def raised_by(iterable: Iterable[Any]) -> BaseException:
    """The exception that iterating ``iterable`` (e.g. a DataLoader) raises.

    Its traceback is dropped here: it holds the DataLoader iterator in a reference cycle
    with the exception (torch's ``ExceptionWrapper.reraise`` keeps it in a local), and an
    iterator freed later by the garbage collector finds its queues already closed and
    waits 5 s per worker before killing it.
    """
    try:
        for _ in iterable:
            pass
    except Exception as error:
        error.__traceback__ = None
        return error
    raise AssertionError(f"iterating {iterable!r} raised nothing")


def add_one(tensor: torch.Tensor) -> torch.Tensor:
    """An in-place model transform: it must never reach a cached sample."""
    return tensor.add_(1)


class TinyModel(lightning.LightningModule):
    """Counts batches and records the sample values each loader served."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.train_values: list[list[int]] = []  # one list per epoch
        self.val_batches: Counter[int] = Counter()
        self.val_values: dict[int, list[int]] = {}
        self.test_batches: Counter[int] = Counter()

    def on_train_epoch_start(self) -> None:
        self.train_values.append([])

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        tensor, metadata = batch
        values = metadata["value"].tolist()
        # The sample is filled with its value: check the data, not just the count.
        assert tensor.flatten(1).tolist() == [[float(v)] * 4 for v in values]
        self.train_values[-1].extend(values)
        loss: torch.Tensor = self.layer(tensor.flatten(1)).square().mean()
        return loss

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        tensor, metadata = batch
        self.val_batches[dataloader_idx] += 1
        self.val_values.setdefault(dataloader_idx, []).extend(metadata["value"].tolist())
        assert tensor.flatten(1)[:, 0].tolist() == [float(v) for v in metadata["value"]]

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.test_batches[dataloader_idx] += 1

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)
