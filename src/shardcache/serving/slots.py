"""Batch buffers lent one batch at a time: which are free, filled, delivered, or retired.

Each process that collates (the main process, or each DataLoader worker) owns
`SLOTS_PER_PROCESS` slots; a slot holds one buffer, allocated on first need (in shared memory
when workers fill it). The main process keeps every buffer it received mapped, so a reused
slot arrives with no new mapping and no page faults. A shared state array hands slots back
and forth, one writer per transition::

    FREE --(filler fills it)--> FILLED --(main receives it)--> DELIVERED
      ^                                                         |   |
      +-------------(main: nothing references the batch)--------+   |
      +--(filler: drops its buffer, takes a new one)-- RETIRED <----+
                                           (main: the batch is held long after delivery)

A batch still referenced `RETIRE_AFTER` deliveries later is *held* (a callback or
``self.last_batch = batch`` keeps it): its slot gets a new buffer and the held batch keeps
the old one, so holding a batch never makes the collator fall back to fresh allocations;
memory stays bounded by what the user holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .fields import FieldLayout

FREE, FILLED, DELIVERED, RETIRED = 0, 1, 2, 3

SLOTS_PER_PROCESS = 4
"""Buffers one process may lend at once: DataLoader's default prefetch of two, one being
consumed, one spare."""


def _new_storage(nbytes: int, *, shared: bool) -> torch.UntypedStorage:
    """A buffer of ``nbytes``; ``shared``: in shared memory, for a worker to fill.

    Allocated there directly, as ``default_collate`` does in workers: ``share_memory_()`` on
    a new storage allocates it twice and copies it (a 32 MiB buffer: 36 ms to allocate and
    fill the first time, against 27 ms).
    """
    if shared:
        return torch.UntypedStorage._new_shared(nbytes)  # type: ignore[no-untyped-call,no-any-return]
    return torch.empty(nbytes, dtype=torch.uint8).untyped_storage()


def _use_count(storage: torch.UntypedStorage) -> int:
    return int(torch._C._storage_Use_Count(storage._cdata))


class _Buffer:
    """One lendable storage and the use count that means "nobody else holds it"."""

    def __init__(self, storage: torch.UntypedStorage) -> None:
        self.storage = storage
        self.idle_count = _use_count(storage)

    def idle(self) -> bool:
        return _use_count(self.storage) <= self.idle_count


class SlotPool:
    """The slots of one collator, across its processes.

    Args:
        count: slots in all (`SLOTS_PER_PROCESS` per collating process).
        shared: workers fill the slots: states and buffers live in shared memory.
    """

    def __init__(self, count: int, shared: bool) -> None:
        self.shared = shared
        self.states = torch.zeros(count, dtype=torch.int8)
        if shared:
            self.states.share_memory_()  # type: ignore[no-untyped-call]
        self.retire_after = 2 * count
        self._own: dict[int, _Buffer] = {}  # slots this process fills
        self._received: dict[int, _Buffer] = {}  # main process: buffers lent out
        self._delivered_at: dict[int, int] = {}
        self._deliveries = 0

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_own"], state["_received"], state["_delivered_at"] = {}, {}, {}
        return state

    def take(
        self, process: int, nbytes: int, *, in_process: bool
    ) -> tuple[int, torch.UntypedStorage, bool] | None:
        """A free slot of ``process`` with room for ``nbytes``: ``(slot, storage, is_new)``.

        None when every slot of the process is lent out.
        """
        if in_process:
            self._release()
        first = process * SLOTS_PER_PROCESS
        for slot in range(first, first + SLOTS_PER_PROCESS):
            state = int(self.states[slot])
            if state == RETIRED:  # the held batch keeps the old buffer alive by itself
                self._own.pop(slot, None)
            elif state != FREE:
                continue
            buffer = self._own.get(slot)
            is_new = buffer is None or buffer.storage.nbytes() < nbytes
            if is_new:
                storage = _new_storage(nbytes, shared=self.shared)
                buffer = self._own[slot] = _Buffer(storage)
            assert buffer is not None
            self.states[slot] = FILLED
            return slot, buffer.storage, is_new
        return None

    def deliver_own(self, slot: int, layout: FieldLayout) -> torch.Tensor:
        """Without workers: one field of the batch this process filled in ``slot``."""
        self._mark_delivered(slot, self._own[slot])
        return layout.view(self._own[slot].storage)

    def receive(
        self, slot: int, storage: torch.UntypedStorage | None, layout: FieldLayout
    ) -> torch.Tensor:
        """Main process: one field of a worker's batch in ``slot``, and free idle slots.

        ``storage`` comes with the first batch of a (new or grown) buffer; every field of that
        batch carries the same storage object.
        """
        current = self._received.get(slot)
        if storage is not None and (current is None or current.storage is not storage):
            current = _Buffer(storage)
        assert current is not None, "a pooled field arrived before its buffer"
        self._mark_delivered(slot, current)
        view = layout.view(current.storage)
        self._release()
        return view

    def _mark_delivered(self, slot: int, buffer: _Buffer) -> None:
        if int(self.states[slot]) == DELIVERED and self._received.get(slot) is buffer:
            return  # a later field of the same batch
        self._received[slot] = buffer
        self._deliveries += 1
        self._delivered_at[slot] = self._deliveries
        self.states[slot] = DELIVERED

    def _release(self) -> None:
        """Free the slots whose batch nobody holds; retire those held for long."""
        for slot, buffer in list(self._received.items()):
            if int(self.states[slot]) != DELIVERED:
                continue
            if buffer.idle():
                self.states[slot] = FREE
            elif self._deliveries - self._delivered_at[slot] > self.retire_after:
                del self._received[slot]
                if self.shared:
                    self.states[slot] = RETIRED  # the worker that fills it drops its buffer
                else:
                    self._own.pop(slot, None)
                    self.states[slot] = FREE
