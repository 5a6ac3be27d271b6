"""A small cache whose pages a test drops, and page-cache residency to observe hints by.

Residency is read with ``mincore`` (`benchmarks.pagecache`) after dropping the shards'
pages with ``POSIX_FADV_DONTNEED``; where the filesystem keeps them (tmpfs), tests skip.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from benchmarks import pagecache

from shardcache.store import CacheDataset, ensure_cache
from shardcache.store.header import read_header

from .loaders import SeededLoader, make_items

SIDE = 128  # 64 KiB float32 samples: every shard holds samples beyond its hinted head
PER_SHARD = 4


def shard_paths(dataset: CacheDataset) -> list[Path]:
    return [dataset.path / shard.file for shard in dataset.manifest.shards]


def pages_of(path: Path, index: int) -> range:
    """The pages sample ``index``'s tensor occupies in shard ``path``."""
    entry = read_header(path).tensors[f"{index}/0"]
    return range(entry.begin // pagecache.PAGE, -(-entry.end // pagecache.PAGE))


def resident(path: Path, pages: range) -> list[bool]:
    resident_map = pagecache.resident_map(path)
    return [resident_map[page] for page in pages]


def eventually(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    """Whether ``condition`` holds within ``seconds`` (hinted reads complete asynchronously)."""
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def cold_cache_opener(tmp_path: Path, cache_dir: Path) -> Callable[[], CacheDataset]:
    """Build a 4-shard cache; the returned function drops its pages and opens it again."""
    loader = SeededLoader(tmp_path / "log", side=SIDE)
    sample_bytes = SIDE * SIDE * 4
    built = ensure_cache(
        cache_dir, "train", make_items(16), loader, shard_bytes=PER_SHARD * sample_bytes
    )
    paths = shard_paths(built)
    assert len(paths) == 16 // PER_SHARD
    built.close()
    del built

    def reopen() -> CacheDataset:
        if pagecache.drop(paths)["resident_after"] > 0:
            pytest.skip("this filesystem keeps dropped pages (POSIX_FADV_DONTNEED is a no-op)")
        return ensure_cache(cache_dir, "train", make_items(16), loader)

    return reopen
