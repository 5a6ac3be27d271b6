"""Read-ahead hints: a cold cache asks the disk for its headers, and a batch for its samples.

Page-cache residency is observed with ``mincore`` (`benchmarks.pagecache`), after dropping
the shards' pages with ``POSIX_FADV_DONTNEED``; where the filesystem keeps them (tmpfs),
the tests skip.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from benchmarks import pagecache

from shardcache.serving.served import ServedDataset
from shardcache.store import CacheDataset
from shardcache.store.readahead import HEAD_BYTES
from support.coldcache import PER_SHARD, eventually, pages_of, resident, shard_paths
from support.loaders import make_items


def test_opening_a_cold_cache_asks_for_each_shard_header_and_no_more(
    cold_cache: Callable[[], CacheDataset],
) -> None:
    dataset = cold_cache()
    paths = shard_paths(dataset)
    heads = range(HEAD_BYTES // pagecache.PAGE)

    assert eventually(lambda: all(all(resident(path, heads)) for path in paths))
    last = pagecache.resident_map(paths[0])[-1]
    assert not last, "the hint is bounded to the head of each shard"
    dataset.close()


def test_a_batch_prefetch_asks_for_its_samples_until_their_shard_is_read(
    cold_cache: Callable[[], CacheDataset],
) -> None:
    dataset = cold_cache()
    paths = shard_paths(dataset)
    last = PER_SHARD - 1  # the last sample of each shard lies beyond the hinted head
    batch = [last, PER_SHARD + last]  # in shards 0 and 1
    wanted = [(paths[0], pages_of(paths[0], last)), (paths[1], pages_of(paths[1], batch[1]))]
    assert not any(any(resident(path, pages)) for path, pages in wanted)

    dataset.prefetch(batch)  # reads headers only, touches no sample

    assert eventually(lambda: all(all(resident(path, pages)) for path, pages in wanted))

    # Once this process has read shard 0, the kernel's own read-ahead takes over there.
    tensor, _ = dataset[0]
    tensor.sum()  # faults its pages in
    assert all(resident(paths[0], pages_of(paths[0], 0)))
    untouched = pages_of(paths[0], last - 1)
    pagecache.drop([paths[0]])  # the mapped pages of sample 0 stay; the others go
    assert not any(resident(paths[0], untouched))
    dataset.prefetch([last - 1])
    time.sleep(0.5)
    assert not any(resident(paths[0], untouched))
    dataset.close()


def test_batches_fetched_through_the_served_dataset_are_prefetched(
    cold_cache: Callable[[], CacheDataset],
) -> None:
    dataset = cold_cache()
    asked: list[list[int]] = []
    prefetch = dataset.prefetch
    dataset.prefetch = lambda indices: (asked.append(list(indices)), prefetch(indices))  # type: ignore[method-assign]

    samples = ServedDataset(dataset).__getitems__([3, 7, 12])

    assert asked == [[3, 7, 12]]
    assert [sample[1]["label"] for sample in samples] == [0, 1, 0]
    assert [sample[1]["name"] for sample in samples] == [make_items(16)[i][0] for i in asked[0]]
    dataset.close()


def test_a_batch_given_as_a_one_shot_iterable_is_served_whole(
    cold_cache: Callable[[], CacheDataset],
) -> None:
    dataset = cold_cache()
    samples = ServedDataset(dataset).__getitems__(index for index in [3, 7, 12])  # type: ignore[arg-type]
    assert [sample[1]["name"] for sample in samples] == [make_items(16)[i][0] for i in (3, 7, 12)]
    dataset.close()
