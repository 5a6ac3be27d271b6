"""Hints ahead of the reads: the batches a loader draws next are asked from the disk early.

`LookaheadBatches` on plain lists; `CacheDataset.will_need` and the background advisor on a
real cache whose pages are dropped (``POSIX_FADV_DONTNEED``, observed with ``mincore``);
`LookaheadLoader` as `CachingDataModule` builds it. The two-rank DDP test
(`test_ddp.py`) checks that Lightning keeps it, with its distributed sampler.
"""

from __future__ import annotations

import functools
import mmap
import multiprocessing
import multiprocessing.queues
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning
import pytest
import torch
from benchmarks import pagecache
from torch.utils.data import BatchSampler, DistributedSampler

from shardcache import CachingDataModule
from shardcache.serving.lookahead import LookaheadBatches, LookaheadLoader
from shardcache.store import CacheDataset, ensure_cache, readahead
from support.coldcache import eventually, pages_of, resident, shard_paths
from support.loaders import DictImageLoader, SeededLoader, make_items
from support.trainers import quiet_trainer


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
    # The reader's batch and 2 hinted ones, of 4 indices each, spend a budget of 12.
    assert recorder.asked == batches(10)[1:3]
    assert drain(lookahead, recorder) == batches(10)  # a second pass: nothing left to hint
    assert len(recorder.asked) == 2


def test_a_pass_whose_every_batch_was_yielded_spends_the_budget_without_its_end() -> None:
    recorder = Recorder()
    lookahead = LookaheadBatches(batches(10), recorder, budget=40, skip=1, ahead=2)
    first = iter(lookahead)
    assert [next(first) for _ in range(len(lookahead))] == batches(10)  # as Lightning asks
    assert recorder.asked == batches(10)[1:]
    second = iter(lookahead)  # the first pass is dropped: never asked for its end
    del first
    assert list(second) == batches(10)
    assert recorder.asked == batches(10)[1:]  # one epoch's worth, spent


def test_a_pass_left_early_spends_none_of_the_budget() -> None:
    recorder = Recorder()
    lookahead = LookaheadBatches(batches(10), recorder, budget=40, skip=1, ahead=2)
    for position, _ in enumerate(lookahead):  # as Lightning's sanity check does
        if position == 1:
            break
    partial = len(recorder.asked)
    assert partial > 0
    assert drain(lookahead, recorder) == batches(10)
    assert recorder.asked[partial:] == batches(10)[1:]  # the whole pass, hinted to its end


def test_batches_that_are_not_sequences_pass_unhinted() -> None:
    recorder = Recorder()
    one_shot = [iter(batch) for batch in batches(5)]  # a custom batch sampler's
    lookahead = LookaheadBatches(one_shot, recorder, budget=10**6, skip=1, ahead=2)
    assert [list(batch) for batch in lookahead] == batches(5)
    assert recorder.asked == []


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
    submitted: list[list[readahead.Hint]] = []
    monkeypatch.setattr("shardcache.store.reader.will_need_soon", submitted.append)
    cached, cold = 1, 5  # in shards 0 and 1
    dataset[cached][0].sum()

    dataset.will_need([cached, cold])

    assert len(submitted) == 1
    assert len(submitted[0]) == 1  # only the cold sample's
    shard = dataset._shard(cold)[0]
    assert shard.storage is not None
    entry = shard.header.tensors[f"{cold}/0"]
    begin = shard.storage.data_ptr() + entry.begin
    aligned = begin - begin % pagecache.PAGE
    hint = submitted[0][0]
    assert isinstance(hint, functools.partial)
    assert hint.args == (aligned, begin + entry.end - entry.begin - aligned, mmap.MADV_WILLNEED)
    dataset.close()


def test_a_sample_whose_neighbours_are_cached_is_still_hinted_when_its_middle_is_not(
    cold_cache: Callable[[], CacheDataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Samples share their first and last pages with their neighbours: all pages count."""
    dataset = cold_cache()
    path = shard_paths(dataset)[0]
    submitted: list[list[readahead.Hint]] = []
    monkeypatch.setattr("shardcache.store.reader.will_need_soon", submitted.append)
    dataset.will_need([1, 3])
    for hint in submitted.pop():
        hint()  # synchronously, as the advisor thread would
    assert eventually(lambda: all(resident(path, pages_of(path, 1))))
    assert eventually(lambda: all(resident(path, pages_of(path, 3))))
    middle = pages_of(path, 2)[1:-1]
    assert not any(resident(path, middle))

    dataset.will_need([2])

    assert [len(hints) for hints in submitted] == [1]
    dataset.close()


def test_a_dict_sample_is_hinted_where_its_tensors_lie_not_the_shard_between_them(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shard lays out every float32 target before the uint8 images: far from each other."""
    loader = DictImageLoader(tmp_path / "log", side=128)  # a 16 KiB narrow image per sample
    built = ensure_cache(cache_dir, "train", make_items(16), loader)
    (path,) = shard_paths(built)
    built.close()
    if pagecache.drop([path])["resident_after"] > 0:
        pytest.skip("this filesystem keeps dropped pages (POSIX_FADV_DONTNEED is a no-op)")
    dataset = ensure_cache(cache_dir, "train", make_items(16), loader)
    shard = dataset._shard(12)[0]
    assert shard.storage is not None
    base = shard.storage.data_ptr()
    image, target = (shard.header.tensors[f"12/{field}"] for field in (0, 1))
    assert target.end < image.begin - 10 * pagecache.PAGE  # the layout this test is about
    image_pages, target_pages = (
        range(entry.begin // pagecache.PAGE, -(-entry.end // pagecache.PAGE))
        for entry in (image, target)
    )

    def pages(hints: list[readahead.Hint]) -> set[int]:
        hinted = set()
        for hint in hints:
            assert isinstance(hint, functools.partial)
            address, length, advice = hint.args
            assert advice == mmap.MADV_WILLNEED
            first = (address - base) // pagecache.PAGE
            hinted |= set(range(first, first + -(-length // pagecache.PAGE)))
        return hinted

    submitted: list[list[readahead.Hint]] = []
    monkeypatch.setattr("shardcache.store.reader.will_need_soon", submitted.append)
    dataset.will_need([12])
    assert eventually(lambda: all(resident(path, target_pages)))  # the head, hinted at open
    assert pages(submitted.pop()) == set(image_pages)  # what the page cache lacks

    advised: list[readahead.Hint] = []
    monkeypatch.setattr("shardcache.store.reader.advise_now", advised.append)
    dataset.prefetch([12])  # a reader's own first batch: hinted whatever is cached
    assert pages(advised) == set(image_pages) | set(target_pages)
    dataset.close()


def test_will_need_never_raises_for_what_a_read_would_report(
    cold_cache: Callable[[], CacheDataset],
) -> None:
    dataset = cold_cache()
    dataset.will_need([10**6, -(10**6)])  # out of range: the read raises IndexError
    with pytest.raises(IndexError):
        dataset[10**6]
    dataset.close()


def test_the_advisor_thread_ends_when_idle_and_starts_again_for_new_hints(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(readahead._Advisor, "IDLE_SECONDS", 0.05)
    advisor = readahead._Advisor()
    done: list[int] = []
    advisor.submit([lambda: done.append(1)])
    first = advisor._thread
    assert first is not None
    assert eventually(lambda: advisor._thread is None, seconds=5)
    assert eventually(lambda: not first.is_alive(), seconds=5)
    advisor.submit([lambda: done.append(2), lambda: 1 / 0, lambda: done.append(3)])
    assert advisor._thread is not None
    assert advisor._thread is not first
    assert eventually(lambda: done == [1, 2, 3], seconds=5)  # a failing hint stops nothing


def test_an_advisor_that_cannot_start_a_thread_drops_its_hints_and_raises_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    advisor = readahead._Advisor()

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    with monkeypatch.context() as patch:
        patch.setattr(threading.Thread, "start", refuse)
        advisor.submit([lambda: None])
    assert advisor._thread is None
    assert advisor._queue.empty()
    done = threading.Event()
    advisor.submit([done.set])  # threads can be had again
    assert done.wait(5)


def _child_hints(results: multiprocessing.queues.Queue[object]) -> None:
    inherited = readahead._advisor._thread
    done = threading.Event()
    readahead.will_need_soon([done.set])
    results.put((inherited is None, done.wait(5)))


def test_a_forked_child_starts_its_own_advisor_thread() -> None:
    release = threading.Event()
    readahead.will_need_soon([lambda: release.wait(10)])  # keeps the parent's thread busy
    assert readahead._advisor._thread is not None
    try:
        context = multiprocessing.get_context("fork")
        results = context.Queue()
        child = context.Process(target=_child_hints, args=(results,))
        child.start()
        assert results.get(timeout=30) == (True, True)
        child.join(30)
    finally:
        release.set()


def test_page_cache_residency_is_told_for_whole_spans(
    cold_cache: Callable[[], CacheDataset],
) -> None:
    if readahead._libc() is None:
        pytest.skip("no mincore here")
    dataset = cold_cache()
    shard = dataset._shard(0)[0]
    assert shard.storage is not None
    entries = {index: shard.header.tensors[f"{index}/0"] for index in (0, 3)}
    address = shard.storage.data_ptr()

    def cached(index: int) -> bool | None:
        entry = entries[index]
        return readahead.span_cached(address + entry.begin, entry.end - entry.begin)

    assert cached(3) is False  # beyond the hinted head
    dataset[0][0].sum()  # a fault: it reads around itself, the whole of this small shard
    assert cached(0) is True
    assert cached(3) is True
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
    # The budget is one epoch's worth of indices (24): the reader's batch and 20 hinted.
    list(loader)
    assert len(asked) == 5  # spent: no more hints
    module.teardown("fit")


class _Epochs(lightning.LightningModule):
    """Trains nothing; marks where each training epoch starts among the hints."""

    def __init__(self, asked: list[object]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.asked = asked

    def on_train_epoch_start(self) -> None:
        self.asked.append(f"epoch {self.current_epoch}")

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.weight * batch[0].mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("parallel", [-1, 1])
def test_a_trainer_hints_the_first_training_epoch_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parallel: int
) -> None:
    """Lightning asks a loader for ``len()`` batches, never for its end: a pass still counts."""
    asked: list[object] = []
    monkeypatch.setattr(CacheDataset, "will_need", lambda self, indices: asked.append(len(indices)))
    module = _module(tmp_path, "disk", parallel=parallel)
    trainer = quiet_trainer(max_epochs=3)
    trainer.fit(_Epochs(asked), train_dataloaders=module.train_dataloader())
    second = asked.index("epoch 1")  # with workers, the first hints come before "epoch 0"
    skip = max(1, parallel)  # each reader's first batch: its own to hint
    assert [hint for hint in asked[:second] if hint != "epoch 0"] == [4] * (6 - skip)
    assert asked[second:] == ["epoch 1", "epoch 2"]
    module.teardown("fit")


def test_the_memory_tier_loader_draws_plain_batches(tmp_path: Path) -> None:
    module = _module(tmp_path, "memory", parallel=-1)
    loader = module.train_dataloader()
    assert isinstance(loader._index_sampler, BatchSampler)
    assert len(list(loader)) == 6
    module.teardown("fit")


def test_with_workers_the_main_process_hints_every_batch_past_the_workers_first_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[list[int]] = []
    monkeypatch.setattr(
        CacheDataset, "will_need", lambda self, indices: asked.append(list(indices))
    )
    module = CachingDataModule(
        {"train": make_items(40)},
        SeededLoader(tmp_path / "log"),
        batch_size=2,
        parallel=2,
        cache="disk",
        cache_dir=tmp_path / "cache",
    )
    module.prepare_data()
    module.setup("fit")
    loader = module.train_dataloader()
    skip = 2  # the first batch of each worker: its reader hints it
    assert loader._index_sampler.skip == skip

    served = [batch[1]["name"] for batch in loader]  # the workers' order is the draws'

    names = [name for name, _ in make_items(40)]
    assert [[names[index] for index in batch] for batch in asked] == [
        list(batch) for batch in served[skip:]
    ]
    module.teardown("fit")


def test_a_loader_given_a_ranks_sampler_hints_one_epoch_of_its_share(tmp_path: Path) -> None:
    """What Lightning does under DDP: the same class again, with a distributed sampler."""
    module = _module(tmp_path, "disk", parallel=-1)
    loader = module.train_dataloader()
    rank = LookaheadLoader(
        loader.dataset,
        batch_size=4,
        sampler=DistributedSampler(loader.dataset, num_replicas=2, rank=1, shuffle=False),
        collate_fn=loader.collate_fn,
    )
    lookahead = rank._index_sampler
    assert isinstance(lookahead, LookaheadBatches)
    assert lookahead.budget == 12  # 24 samples, 2 ranks
    assert list(lookahead) == [list(range(1 + 8 * i, 8 * (i + 1), 2)) for i in range(3)]
    module.teardown("fit")
