"""Batch assembly into reused buffers, so that a batch costs one copy and no page faults.

Through a stock DataLoader every batch is a fresh allocation: ``default_collate`` asks for
a new 32 MiB tensor (glibc serves it with a new ``mmap``), and touching fresh pages costs
more than copying the samples (page faults plus zeroing: ~2.3 GB/s here, against ~16 GB/s
for memcpy). With worker processes each batch is also a new shared-memory segment that the
main process maps and faults in again.

`BatchCollator` keeps a few batch buffers per process and lends each to one batch at a
time. A buffer is reused only when nothing references it any more: the storage's use count
(every tensor, view or storage object that shares it holds one) is back to what the
collator's own reference accounts for. So a batch the user keeps, modifies, or takes a
view of is never overwritten; it simply keeps its buffer and the collator lends another.

With workers, each worker owns a range of buffer slots in shared memory; the main process
keeps every slot it has received mapped, so a reused slot arrives with no new mapping and
no page faults. A small shared state array hands slots back and forth, one writer per
transition::

    FREE --(worker fills it)--> FILLED --(main receives it)--> DELIVERED
      ^-----------------(main sees no holder left)-----------------'

Only loaders whose workers persist use slots (two live iterators of a non-persistent
DataLoader would run two workers of the same id); other batches are collated as usual.
"""

from __future__ import annotations

import ctypes
import math
import uuid
import weakref
from typing import Any

import torch
from torch.utils.data import default_collate, get_worker_info

from ..core.dtypes import view_of

FREE, FILLED, DELIVERED = 0, 1, 2
SLOTS_PER_PROCESS = 4
"""Buffers one process may lend at once: DataLoader's default prefetch of two, one being
consumed, one spare. Buffers are allocated on first need, up to this many."""

_COLLATORS: weakref.WeakValueDictionary[str, BatchCollator] = weakref.WeakValueDictionary()
"""This process's collators by id, so that a batch arriving from a worker finds its slot."""


def _use_count(storage: torch.UntypedStorage) -> int:
    return int(torch._C._storage_Use_Count(storage._cdata))


def _view(
    storage: torch.UntypedStorage, shape: tuple[int, ...], dtype: torch.dtype
) -> torch.Tensor:
    return view_of(storage, 0, shape, dtype)


def _stack_into(
    storage: torch.UntypedStorage, tensors: list[torch.Tensor], shape: tuple[int, ...]
) -> None:
    """Copy ``tensors`` one after another into ``storage``, single-threaded.

    ``torch.stack`` splits a large copy over the intra-op threads, and when the CPUs are
    busy (workers, the model, other jobs) those OpenMP threads wait for each other: here,
    on 2 busy cores, a 32 MiB stack ran at 0.13 GB/s with 2 threads against 8.3 GB/s with
    one. ``memmove`` is one thread whatever the settings, and releases the GIL.
    """
    if not all(tensor.is_contiguous() for tensor in tensors):
        torch.stack(tensors, out=_view(storage, shape, tensors[0].dtype))
        return
    destination = storage.data_ptr()
    for tensor in tensors:
        ctypes.memmove(destination, tensor.data_ptr(), tensor.nbytes)
        destination += tensor.nbytes


class _Buffer:
    """One lendable storage and the use count that means "nobody else holds it"."""

    def __init__(self, storage: torch.UntypedStorage) -> None:
        self.storage = storage
        self.idle_count = _use_count(storage)

    def idle(self) -> bool:
        return _use_count(self.storage) <= self.idle_count


class _SlotBatch:
    """What a worker sends instead of a batch tensor: the slot, and its storage once."""

    def __init__(
        self,
        collator_id: str,
        slot: int,
        storage: torch.UntypedStorage | None,
        shape: tuple[int, ...],
        dtype: torch.dtype,
    ) -> None:
        self.args = (collator_id, slot, storage, shape, dtype)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_receive, self.args)


def _receive(
    collator_id: str,
    slot: int,
    storage: torch.UntypedStorage | None,
    shape: tuple[int, ...],
    dtype: torch.dtype,
) -> torch.Tensor:
    """Runs in the main process as a worker's batch is unpickled: the batch tensor."""
    collator = _COLLATORS.get(collator_id)
    if collator is None:
        if storage is None:
            raise RuntimeError("a pooled batch arrived for a collator this process lacks")
        return _view(storage, shape, dtype)
    return collator.deliver(slot, storage, shape, dtype)


class BatchCollator:
    """A ``collate_fn`` for ``(Tensor, dict)`` samples that reuses batch buffers.

    It returns what ``default_collate`` returns (``[batch_tensor, metadata]``); samples of
    other shapes, dtypes or structures are collated by ``default_collate``.

    Args:
        num_workers: the DataLoader's worker processes.
        persistent_workers: whether they persist; buffers are lent only then, or without
            workers.
    """

    def __init__(self, num_workers: int, persistent_workers: bool) -> None:
        self.id = uuid.uuid4().hex
        self.num_workers = num_workers
        self.pooled = num_workers == 0 or persistent_workers
        processes = max(num_workers, 1)
        self.states = torch.zeros(processes * SLOTS_PER_PROCESS, dtype=torch.int8)
        if num_workers:
            self.states.share_memory_()  # type: ignore[no-untyped-call]
        self._own: dict[int, _Buffer] = {}  # slots this process fills
        self._received: dict[int, _Buffer] = {}  # main process: slots it was sent
        _COLLATORS[self.id] = self

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_own"] = {}
        state["_received"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Register in the unpickling process, where worker batches will be received."""
        self.__dict__.update(state)
        _COLLATORS[self.id] = self

    def __call__(self, batch: list[Any]) -> Any:
        """Collate ``batch`` like ``default_collate``, into a lent buffer when possible."""
        tensors = self._batch_tensors(batch)
        if tensors is None or not self.pooled:
            return default_collate(batch)
        metadata = default_collate([sample[1] for sample in batch])
        first = tensors[0]
        shape = (len(tensors), *first.shape)
        nbytes = math.prod(shape) * first.element_size()
        worker = get_worker_info()
        taken = self._take(0 if worker is None else worker.id, nbytes)
        if taken is None:
            return [default_collate(tensors), metadata]
        slot, buffer, is_new = taken
        _stack_into(buffer.storage, tensors, shape)
        if worker is None:
            return [self.deliver(slot, None, shape, first.dtype), metadata]
        return [
            _SlotBatch(self.id, slot, buffer.storage if is_new else None, shape, first.dtype),
            metadata,
        ]

    @staticmethod
    def _batch_tensors(batch: list[Any]) -> list[torch.Tensor] | None:
        """The samples' tensors when they can share one buffer, else None."""
        if not batch or not all(isinstance(s, tuple | list) and len(s) == 2 for s in batch):
            return None
        tensors = [sample[0] for sample in batch]
        first = tensors[0]
        if not all(
            isinstance(t, torch.Tensor)
            and t.shape == first.shape
            and t.dtype == first.dtype
            and t.device.type == "cpu"
            and not t.requires_grad
            for t in tensors
        ):
            return None
        return tensors

    def _take(self, process: int, nbytes: int) -> tuple[int, _Buffer, bool] | None:
        """A free slot of this process with room for ``nbytes``, allocating if needed."""
        if process == 0 and not self.num_workers:
            self._release_idle()
        first = process * SLOTS_PER_PROCESS
        for slot in range(first, first + SLOTS_PER_PROCESS):
            if int(self.states[slot]) != FREE:
                continue
            buffer = self._own.get(slot)
            is_new = buffer is None or buffer.storage.nbytes() < nbytes
            if is_new:
                storage = torch.empty(nbytes, dtype=torch.uint8).untyped_storage()
                if self.num_workers:
                    storage.share_memory_()
                buffer = self._own[slot] = _Buffer(storage)
            assert buffer is not None
            self.states[slot] = FILLED
            return slot, buffer, is_new
        return None

    def deliver(
        self,
        slot: int,
        storage: torch.UntypedStorage | None,
        shape: tuple[int, ...],
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """Main process: hand out the batch in ``slot`` and free slots nobody holds."""
        if storage is not None:  # a worker's new (or grown) buffer, mapped from now on
            self._received[slot] = _Buffer(storage)
        elif not self.num_workers:  # the collator filled its own buffer, perhaps a new one
            self._received[slot] = self._own[slot]
        tensor = _view(self._received[slot].storage, shape, dtype)
        self.states[slot] = DELIVERED
        self._release_idle()
        return tensor

    def _release_idle(self) -> None:
        for slot, buffer in self._received.items():
            if int(self.states[slot]) == DELIVERED and buffer.idle():
                self.states[slot] = FREE
