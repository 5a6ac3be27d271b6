"""Hints ahead of the reads: the batches a loader draws next are asked from the disk early.

`LookaheadBatches` on plain lists; `CacheDataset.will_need` and the background advisor on a
real cache whose pages are dropped (``POSIX_FADV_DONTNEED``, observed with ``mincore``);
`LookaheadLoader` as `CachingDataModule` builds it. The two-rank DDP test
(`test_ddp.py`) checks that Lightning keeps it, with its distributed sampler.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from benchmarks import pagecache
from torch.utils.data import BatchSampler, SequentialSampler

from shardcache import CachingDataModule
from shardcache.serving.lookahead import LookaheadBatches, LookaheadLoader
from shardcache.store import CacheDataset, readahead
from support.coldcache import eventually, pages_of, resident, shard_paths
from support.loaders import SeededLoader, make_items


class Recorder:
    """A ``will_need`` that records what it was asked, and when (in draws yielded)."""

    def __init__(self) -> None:
        self.asked: list[list[int]] = []
        self.yielded = 0
        self.asked_at: list[int] = []

    def __call__(self, indices: Sequence[int]) -> None:
        self.asked.append(list(indices))
        self.asked_at.append(self.yielded)


def batches(count: int, size: int = 4) -> list[list[int]]:
    return [list(range(i * size, (i + 1) * size)) for i in range(count)]


def drain(lookahead: LookaheadBatches, recorder: Recorder) -> list[list[int]]:
    out = []
    for batch in lookahead:
        out.append(batch)
        recorder.yielded += 1
    return out


@pytest.mark.parametrize(("skip", "ahead"), [(1, 2), (6, 2), (1, 0), (3, 5)])
def test_batches_pass_in_order_each_hinted_once_before_it_is_yielded(skip: int, ahead: int) -> None:
    recorder = Recorder()
    lookahead = LookaheadBatches(batches(20), recorder, budget=10**6, skip=skip, ahead=ahead)

    assert len(lookahead) == 20
    assert drain(lookahead, recorder) == batches(20)
    assert recorder.asked == batches(20)[skip:]  # the first `skip` go out unhinted
    for position, yielded_before in enumerate(recorder.asked_at):
        index = skip + position
        # hinted when the batch `ahead` places before it was drawn (or at once, if earlier)
        assert yielded_before <= max(skip, index - ahead)


def test_hints_stop_once_the_budget_is_spent_and_the_batches_still_all_pass() -> None:
    recorder = Recorder()
    lookahead = LookaheadBatches(batches(10), recorder, budget=12, skip=1, ahead=2)
    assert drain(lookahead, recorder) == batches(10)
    assert recorder.asked == batches(10)[1:4]  # 3 batches of 4 spend a budget of 12
    assert drain(lookahead, recorder) == batches(10)  # a second pass: nothing left to hint
    assert len(recorder.asked) == 3


def test_a_pass_that_ends_early_loses_no_batch_of_the_next() -> None:
    recorder = Recorder()
    lookahead = LookaheadBatches(batches(10), recorder, budget=10**6, skip=1, ahead=3)
    for position, _ in enumerate(lookahead):
        if position == 4:
            break
    assert drain(lookahead, recorder) == batches(10)


# ---- the reader: will_need on a real cache ---------------------------------------------------


def test_will_need_makes_a_read_samples_pages_resident_again_without_reading_them(
    cold_cache: Callable[[], CacheDataset],
) -> None:
    dataset = cold_cache()
    path = shard_paths(dataset)[0]
    tensor, _ = dataset[0]
    tensor.sum()  # this process has read shard 0: prefetch() stops hinting it
    del tensor
    target = pages_of(path, 2)
    pagecache.drop([path])
    assert not any(resident(path, target))

    dataset.prefetch([2])
    time.sleep(0.3)
    assert not any(resident(path, target)), "prefetch leaves a read shard to the kernel"

    dataset.will_need([2])  # hinted from the background thread
    assert eventually(lambda: all(resident(path, target)))
    dataset.close()


def test_will_need_skips_samples_already_cached(
    cold_cache: Callable[[], CacheDataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = cold_cache()
    submitted: list[list[tuple[int, int]]] = []
    monkeypatch.setattr("shardcache.store.reader.will_need_soon", submitted.append)
    cached, cold = 1, 5  # in shards 0 and 1
    dataset[cached][0].sum()

    dataset.will_need([cached, cold])

    assert len(submitted) == 1
    assert len(submitted[0]) == 1  # only the cold sample's span
    address, length = submitted[0][0]
    shard = dataset._shard(cold)[0]
    assert shard.storage is not None
    entry = shard.header.tensors[f"{cold}/0"]
    assert (address, length) == (shard.storage.data_ptr() + entry.begin, entry.end - entry.begin)
    dataset.close()


def test_the_advisor_thread_ends_when_idle_and_starts_again_for_new_hints(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if readahead._libc() is None:
        pytest.skip("no C library to call madvise through")
    monkeypatch.setattr(readahead._Advisor, "IDLE_SECONDS", 0.05)
    advisor = readahead._Advisor()
    buffer = torch.zeros(1 << 16, dtype=torch.uint8)  # any mapped memory takes the hint
    advisor.submit([(buffer.data_ptr(), buffer.numel())])
    assert advisor._thread is not None
    first = advisor._thread
    assert eventually(lambda: advisor._thread is None, seconds=5)
    assert not first.is_alive() or eventually(lambda: not first.is_alive(), seconds=5)
    advisor.submit([(buffer.data_ptr(), buffer.numel())])
    assert advisor._thread is not None
    assert advisor._thread is not first


def test_page_cached_tells_resident_pages_from_dropped_ones(
    cold_cache: Callable[[], CacheDataset],
) -> None:
    if readahead._libc() is None:
        pytest.skip("no mincore here")
    dataset = cold_cache()
    shard = dataset._shard(0)[0]
    assert shard.storage is not None
    entry_of = {index: shard.header.tensors[f"{index}/0"] for index in (0, 3)}
    address = shard.storage.data_ptr()
    assert readahead.page_cached(address + entry_of[3].end - 1) is False  # beyond the head
    dataset[0][0].sum()  # a fault: it reads around itself, the whole of this small shard
    assert readahead.page_cached(address + entry_of[0].begin) is True
    assert readahead.page_cached(address + entry_of[3].end - 1) is True
    dataset.close()


# ---- the loader ------------------------------------------------------------------------------


def _module(tmp_path: Path, cache: str, parallel: int) -> CachingDataModule:
    module = CachingDataModule(
        {"train": make_items(24)},
        SeededLoader(tmp_path / "log"),
        batch_size=4,
        parallel=parallel,
        cache=cache,
        cache_dir=tmp_path / "cache",
    )
    module.prepare_data()
    module.setup("fit")
    return module


def test_the_disk_tier_loader_hints_the_batches_it_draws_after_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[list[int]] = []
    monkeypatch.setattr(
        CacheDataset, "will_need", lambda self, indices: asked.append(list(indices))
    )
    module = _module(tmp_path, "disk", parallel=-1)
    loader = module.train_dataloader()
    assert isinstance(loader, LookaheadLoader)
    assert isinstance(loader._index_sampler, LookaheadBatches)

    served = [batch[1]["name"] for batch in loader]

    assert sorted(name for batch in served for name in batch) == sorted(
        name for name, _ in make_items(24)
    )
    names = [name for name, _ in make_items(24)]
    hinted = [[names[index] for index in batch] for batch in asked]
    assert hinted == [list(batch) for batch in served[1:]]  # every batch but the first
    # The budget is one epoch's worth of indices (24); the first epoch hinted 20.
    list(loader)
    assert [len(batch) for batch in asked] == [4] * 6
    list(loader)
    assert len(asked) == 6  # spent: no more hints
    module.teardown("fit")


def test_the_memory_tier_loader_draws_plain_batches(tmp_path: Path) -> None:
    module = _module(tmp_path, "memory", parallel=-1)
    loader = module.train_dataloader()
    assert isinstance(loader._index_sampler, BatchSampler)
    assert len(list(loader)) == 6
    module.teardown("fit")


def test_with_workers_the_first_batches_of_each_worker_go_unhinted(tmp_path: Path) -> None:
    module = _module(tmp_path, "disk", parallel=2)
    loader = module.train_dataloader()
    lookahead = loader._index_sampler
    assert isinstance(lookahead, LookaheadBatches)
    assert lookahead.skip == 2 * (2 + 1)  # the prefetch of 2 workers, and one batch each
    module.teardown("fit")


def test_a_loader_given_a_sampler_by_hand_keeps_the_lookahead(tmp_path: Path) -> None:
    """What Lightning does under DDP: the same class again, with a new sampler."""
    module = _module(tmp_path, "disk", parallel=-1)
    loader = module.train_dataloader()
    again = LookaheadLoader(
        loader.dataset,
        batch_size=4,
        sampler=SequentialSampler(range(12)),
        collate_fn=loader.collate_fn,
    )
    lookahead = again._index_sampler
    assert isinstance(lookahead, LookaheadBatches)
    assert list(lookahead) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    module.teardown("fit")
