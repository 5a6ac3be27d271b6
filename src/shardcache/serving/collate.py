"""Batch assembly into reused buffers, so that a batch costs one copy and no page faults.

Through a stock DataLoader every batch is a fresh allocation: ``default_collate`` asks for
a new 32 MiB tensor (glibc serves it with a new ``mmap``), and touching fresh pages costs
more than copying the samples (page faults plus zeroing: ~2.3 GB/s here, against ~16 GB/s
for memcpy). With worker processes each batch is also a new shared-memory segment that the
main process maps and faults in again.

`BatchCollator` returns what ``default_collate`` returns, for samples of any structure
(pairs, dicts, lists), but every field whose samples are same-shape CPU tensors is copied
into one buffer per batch (`fields`), which it lends to one batch at a time. Narrow stored
tensors (`shardcache.core.narrow`) are widened straight into that buffer, or, with
``widen="device"``, copied narrow and widened on the accelerator. A buffer is reused only
when nothing references it any more: its storage's use count (every tensor, view or
storage object that shares it holds one) is back to what the collator's own reference
accounts for. A batch the user keeps, modifies, or takes a view of is never overwritten;
one kept for long lets its slot take a new buffer (`slots`).
"""

from __future__ import annotations

import uuid
import weakref
from typing import Any, Literal

import torch
from torch.utils.data import get_worker_info

from ..core.narrow import Widening
from . import fields
from .slots import SLOTS_PER_PROCESS, SlotPool

Widen = Literal["host", "device"]

_COLLATORS: weakref.WeakValueDictionary[str, BatchCollator] = weakref.WeakValueDictionary()
"""This process's collators by id, so that a batch arriving from a worker finds its slots."""


class _SlotField:
    """What a worker sends instead of a pooled field: where it lies in which slot."""

    def __init__(
        self,
        collator_id: str,
        slot: int,
        storage: torch.UntypedStorage | None,
        layout: fields.FieldLayout,
        widening: Widening | None,
    ) -> None:
        self.args = (collator_id, slot, storage, layout, widening)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_receive, self.args)


def _receive(
    collator_id: str,
    slot: int,
    storage: torch.UntypedStorage | None,
    layout: fields.FieldLayout,
    widening: Widening | None,
) -> Any:
    """Runs in the main process as a worker's batch is unpickled: one field of it."""
    collator = _COLLATORS.get(collator_id)
    if collator is None:
        if storage is None:
            raise RuntimeError("a pooled batch arrived for a collator this process lacks")
        return fields.served(layout.view(storage), widening)
    return fields.served(collator.pool.receive(slot, storage, layout), widening)


class BatchCollator:
    """A ``collate_fn`` returning ``default_collate``'s batches, assembled in reused buffers.

    Args:
        num_workers: the DataLoader's worker processes.
        persistent_workers: whether they persist; buffers are lent only then, or without
            workers (two live iterators of a non-persistent DataLoader would run two
            workers of the same id).
        widen: where narrow stored tensors become floats: ``"host"`` (into the batch
            buffer) or ``"device"`` (served as `NarrowBatch`, widened after the transfer).
    """

    def __init__(self, num_workers: int, persistent_workers: bool, widen: Widen = "host") -> None:
        self.id = uuid.uuid4().hex
        self.num_workers = num_workers
        self.pooled = num_workers == 0 or persistent_workers
        self.widen = widen
        self.pool = SlotPool(max(num_workers, 1) * SLOTS_PER_PROCESS, shared=num_workers > 0)
        self.fresh_batches = 0  # this process's batches collated without a lent buffer
        _COLLATORS[self.id] = self

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__.copy()  # the pool pickles its shared state array only

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Register in the unpickling process, where worker batches will be received."""
        self.__dict__.update(state)
        _COLLATORS[self.id] = self

    def __call__(self, batch: list[Any]) -> Any:
        """Collate ``batch`` like ``default_collate``, into a lent buffer when possible."""
        plan = fields.plan(batch, device_widening=self.widen == "device")
        if not self.pooled or not plan.pooled:
            return plan.collate(batch, None)
        worker = get_worker_info()
        process = 0 if worker is None else worker.id
        taken = self.pool.take(process, plan.total_bytes, in_process=not self.num_workers)
        if taken is None:  # every slot of this process is lent: a fresh batch, as usual
            self.fresh_batches += 1
            return plan.collate(batch, None)
        slot, storage, is_new = taken

        def place(layout: fields.FieldLayout, widening: Widening | None) -> Any:
            if worker is None:
                return fields.served(self.pool.deliver_own(slot, layout), widening)
            return _SlotField(self.id, slot, storage if is_new else None, layout, widening)

        return plan.collate(batch, (storage, place))
