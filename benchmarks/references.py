"""Physical references of one machine, for the tiers benchmark's figures to be read against.

memcpy of sample-sized tensors (one cache-hot sample, and samples cycled from a 256 MiB
pool), sequential reads of the shard files from the page cache, and reads through the
disk tier's mappings; each a median of timed rounds (`benchmarks.harness.timed_rates`).
Run by `benchmarks.measure` in a fresh process, right after the first cache is built.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import timed_rates

MB = 1 << 20
POOL_BYTES = 256 * MB
"""Source pool of the memcpy reference: well beyond any CPU cache..."""
POOL_SAMPLES = 4096
"""...in at most this many samples (tiny samples would time Python's loop, not memory)."""


def _rate(action: Callable[[], object], *, nbytes: int, min_seconds: float = 0.2) -> float:
    """Median bytes per second of ``action`` over 5 rounds of at least ``min_seconds``."""
    return statistics.median(timed_rates(action, amount=nbytes, min_seconds=min_seconds))


def references(spec: dict[str, Any]) -> dict[str, Any]:
    """Physical references on this machine (see the module docstring)."""
    from shardcache.store import CacheDataset, CacheRoot

    caches = [CacheDataset(path) for path in CacheRoot(Path(spec["cache_dir"])).published()]
    dataset = min(caches, key=len)  # the N split's cache, not the larger one
    first, _ = dataset[0]
    result: dict[str, Any] = {"sample_shape": list(first.shape), "sample_bytes": first.nbytes}
    # One thread: a physical per-core reference, and steady on a busy machine (two
    # intra-op threads on two shared cores wait on each other for milliseconds).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    target = torch.empty(first.shape)
    result.update(_memcpy_references(first, target))
    shards = sorted(dataset.path.glob("shard-*.safetensors"))
    result.update(_page_cache_reference(shards))
    result.update(_mmap_references(CacheDataset(dataset.path), first, target, shards[0]))
    torch.set_num_threads(threads)
    return result


def _memcpy_references(first: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """``copy_`` of one cache-hot sample, and of samples cycled from a 256 MiB pool."""
    shape, sample_bytes = tuple(first.shape), first.nbytes
    source = torch.rand(shape)
    hot = _rate(lambda: target.copy_(source), nbytes=sample_bytes) / 1e9
    # The same copies from a pool larger than the CPU caches, as the data set's samples
    # are: the reference that reads from the page cache compare with.
    pool = torch.rand(min(max(2, POOL_BYTES // sample_bytes), POOL_SAMPLES), *shape)

    def copy_pool() -> None:
        for sample in pool:
            target.copy_(sample)

    return {"memcpy_hot_gb_s": hot, "memcpy_gb_s": _rate(copy_pool, nbytes=pool.nbytes) / 1e9}


def _page_cache_reference(shards: list[Path]) -> dict[str, float]:
    """Sequential ``readv`` of the shard files (from the page cache) into an 8 MiB buffer."""
    total = sum(shard.stat().st_size for shard in shards)
    view = memoryview(bytearray(8 * MB))

    def read_all() -> None:
        for shard in shards:
            descriptor = os.open(shard, os.O_RDONLY)
            try:
                while os.readv(descriptor, [view]):
                    pass
            finally:
                os.close(descriptor)

    rate = _rate(read_all, nbytes=total, min_seconds=0.1) / 1e9
    return {"page_cache_read_gb_s": rate, "shard_bytes_read": total}


def _mmap_references(
    dataset: Any, first: torch.Tensor, target: torch.Tensor, shard: Path
) -> dict[str, float]:
    """Copies through a fresh dataset's mappings (first touch, then warm), and the overhead
    of ``CacheDataset.__getitem__`` over a bare view of one mapping (``first``'s layout)."""
    count, sample_bytes = len(dataset), first.nbytes
    mark = time.perf_counter()
    for index in range(count):  # the first pass faults the pages into this process
        target.copy_(dataset[index][0])
    result = {"mmap_first_touch_gb_s": count * sample_bytes / (time.perf_counter() - mark) / 1e9}

    def copy_all() -> None:
        for index in range(count):
            target.copy_(dataset[index][0])

    result["mmap_warm_copy_gb_s"] = _rate(copy_all, nbytes=count * sample_bytes) / 1e9

    def getitem_all() -> None:
        for index in range(count):
            dataset[index]

    result["getitem_us"] = 1e6 / _rate(getitem_all, nbytes=count, min_seconds=0.1)
    mapped = torch.UntypedStorage.from_file(str(shard), shared=False, nbytes=shard.stat().st_size)
    shape, stride = tuple(first.shape), first.stride()

    def bare_views() -> None:
        for _ in range(count):
            torch.empty(0).set_(mapped, 0, shape, stride)

    result["bare_view_us"] = 1e6 / _rate(bare_views, nbytes=count, min_seconds=0.1)
    return result
