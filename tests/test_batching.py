"""Pooled batch buffers: same batches as default_collate, and a kept batch is never reused."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from shardcache.serving.collate import BatchCollator
from shardcache.serving.slots import SLOTS_PER_PROCESS, SlotPool


class Numbered(Dataset[tuple[torch.Tensor, dict[str, object]]]):
    """Sample i is a [2, 3] tensor filled with i, with its index as metadata."""

    def __len__(self) -> int:
        return 40

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, object]]:
        return torch.full((2, 3), float(index)), {"index": index, "name": f"s{index}"}


def _loader(workers: int, collate: object, *, shuffle: bool = False) -> DataLoader[object]:
    return DataLoader(
        Numbered(),
        batch_size=8,
        shuffle=shuffle,
        num_workers=workers,
        persistent_workers=workers > 0,
        collate_fn=collate,  # type: ignore[arg-type]
    )


def _expected(indices: torch.Tensor) -> torch.Tensor:
    return indices.to(torch.float32)[:, None, None].expand(-1, 2, 3)


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_batches_equal_default_collate(workers: int) -> None:
    pooled = list(_loader(workers, BatchCollator(workers, workers > 0)))
    plain = list(_loader(0, default_collate))
    assert len(pooled) == len(plain) == 5
    for (tensor, metadata), (expected, expected_metadata) in zip(pooled, plain, strict=True):
        assert torch.equal(tensor, expected)
        assert tensor.dtype == expected.dtype
        assert torch.equal(metadata["index"], expected_metadata["index"])
        assert metadata["name"] == expected_metadata["name"]


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_kept_batches_are_never_overwritten(workers: int) -> None:
    loader = _loader(workers, BatchCollator(workers, workers > 0), shuffle=True)
    for _ in range(3):  # buffers are recycled across epochs while we keep some batches
        kept = list(loader)
        # A view of a batch keeps its buffer busy too.
        first_rows = [(tensor[0], metadata["index"][:1]) for tensor, metadata in loader]
        for tensor, metadata in kept:
            assert torch.equal(tensor, _expected(metadata["index"]))
        for row, index in first_rows:
            assert torch.equal(row, _expected(index)[0])


def test_buffers_are_reused_when_released() -> None:
    collator = BatchCollator(0, persistent_workers=False)
    loader = _loader(0, collator)
    pointers = set()
    for _ in range(3):
        for tensor, metadata in loader:
            assert torch.equal(tensor, _expected(metadata["index"]))
            pointers.add(tensor.untyped_storage().data_ptr())
    # Each batch was released before the next: one or two buffers serve every batch
    # (the last, smaller batch may need its own).
    assert len(pointers) <= 2


@pytest.mark.parametrize("shared", [True, False])
def test_a_slot_buffer_is_in_shared_memory_when_workers_fill_it(shared: bool) -> None:
    pool = SlotPool(2 * SLOTS_PER_PROCESS, shared=shared)
    taken = pool.take(1, 3 << 20, in_process=not shared)
    assert taken is not None
    slot, storage, is_new = taken
    # (a storage's repr in a failed assertion would print every byte)
    in_shared_memory, nbytes = storage.is_shared(), storage.nbytes()
    assert (slot, is_new, in_shared_memory, nbytes) == (SLOTS_PER_PROCESS, True, shared, 3 << 20)


def test_in_place_changes_stay_in_the_callers_batch() -> None:
    loader = _loader(0, BatchCollator(0, persistent_workers=False))
    first_epoch = []
    for tensor, _ in loader:
        tensor.mul_(0)  # the user owns the batch while holding it
        first_epoch.append(tensor)
    for tensor, metadata in loader:
        assert torch.equal(tensor, _expected(metadata["index"]))
    assert all(not tensor.any() for tensor in first_epoch)


def test_unlike_samples_fall_back_to_default_collate() -> None:
    collator = BatchCollator(0, persistent_workers=False)
    ragged = [(torch.zeros(2), {"a": 1}), (torch.zeros(3), {"a": 2})]
    with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size"):
        collator(ragged)  # exactly default_collate's own error
    plain = [torch.ones(2), torch.ones(2)]
    assert torch.equal(collator(plain), torch.ones(2, 2))


def test_non_contiguous_samples_are_copied_correctly() -> None:
    collator = BatchCollator(0, persistent_workers=False)
    samples = [(torch.arange(6.0).reshape(2, 3).t() + i, {"i": i}) for i in range(4)]
    tensor, metadata = collator(samples)
    expected, expected_metadata = default_collate(samples)
    assert torch.equal(tensor, expected)
    assert torch.equal(metadata["i"], expected_metadata["i"])


def test_a_larger_batch_gets_a_larger_buffer() -> None:
    # A sampler that buckets by shape can send larger batches later: the slot's buffer
    # grows, and the batch must come from the new buffer, not the old one.
    collator = BatchCollator(0, persistent_workers=False)
    small, _ = collator([(torch.zeros(2), {"i": 0}), (torch.zeros(2), {"i": 1})])
    del small  # the slot is free again
    large, _ = collator([(torch.full((5,), 7.0), {"i": 2}), (torch.full((5,), 8.0), {"i": 3})])
    assert torch.equal(large, torch.tensor([[7.0] * 5, [8.0] * 5]))


class DictSamples(Dataset[dict[str, object]]):
    """mednet-like dict samples: two same-shape tensor fields, a ragged one, and values."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, index: int) -> dict[str, object]:
        return {
            "image": torch.full((3, 4), float(index)),
            "target": torch.tensor([index % 2], dtype=torch.float32),
            "meta": {"name": f"s{index}", "mask": torch.ones(2, 2, dtype=torch.bool)},
            "index": index,
        }


def test_dict_samples_pool_every_tensor_field_into_one_buffer() -> None:
    collator = BatchCollator(0, persistent_workers=False)
    samples = [DictSamples()[index] for index in range(8)]
    batch = collator(samples)
    expected = default_collate(samples)
    assert list(batch) == list(expected)
    for name in ("image", "target"):
        assert torch.equal(batch[name], expected[name])
        assert batch[name].dtype == expected[name].dtype
    assert torch.equal(batch["meta"]["mask"], expected["meta"]["mask"])
    assert batch["meta"]["name"] == expected["meta"]["name"]
    assert torch.equal(batch["index"], expected["index"])
    storages = {batch[name].untyped_storage().data_ptr() for name in ("image", "target")}
    storages.add(batch["meta"]["mask"].untyped_storage().data_ptr())
    assert len(storages) == 1  # one buffer for the whole batch


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_held_batches_keep_their_data_and_their_slots_get_new_buffers(workers: int) -> None:
    collator = BatchCollator(workers, workers > 0)
    loader = DataLoader(
        DictSamples(),
        batch_size=4,
        num_workers=workers,
        persistent_workers=workers > 0,
        collate_fn=collator,
    )
    held = []
    for epoch in range(12):  # a callback that keeps one batch now and then
        for number, batch in enumerate(loader):
            assert torch.equal(batch["image"][:, 0, 0], batch["index"].to(torch.float32))
            if (epoch * 6 + number) % 5 == 0:
                held.append(batch)
    for batch in held:
        assert torch.equal(
            batch["image"], batch["index"].to(torch.float32)[:, None, None].expand(-1, 3, 4)
        )
    if workers == 0:
        # Held batches retired their slots: every other batch still came from a lent buffer.
        assert collator.fresh_batches == 0
