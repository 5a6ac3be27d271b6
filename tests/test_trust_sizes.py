"""Issue 11, "sizes that break the format": findings 14 and 15.

Shards were bounded by tensor bytes only, so bulky metadata made one shard with a header
beyond safetensors' 100 MB cap (unreadable), and many samples made a header whose parse
is the first ``__getitem__``'s cost in every worker.
"""

from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

from shardcache import CorruptCacheError
from shardcache.store import CacheDataset, ensure_cache
from support.trust import BulkyMetadataLoader, outcome

FIRST_READ_BUDGET = 8 << 20
"""Bytes Python may allocate to open a cache and serve its first sample.

A shard header bounded at ~1 MiB parses within this; a whole-cache header does not.
"""


def test_f14_bulky_metadata_builds_a_readable_cache(tmp_path: Path) -> None:
    """20,000 samples x 5.2 KB of JSON metadata: one 106 MB header, refused by the reader."""
    items = list(range(20_000))
    dataset = ensure_cache(tmp_path, "train", items, BulkyMetadataLoader(5_200))
    try:
        served, error = outcome(lambda: [dataset[0], dataset[19_999]])
    finally:
        dataset.close()
    assert served is not None, f"the cache that was just built cannot be read: {error!r}"
    (first, first_metadata), (last, last_metadata) = served
    assert (int(first), int(last)) == (0, 19_999)
    assert len(first_metadata["text"]) == len(last_metadata["text"]) == 5_200


def test_f15_first_read_cost_does_not_grow_with_the_cache(tmp_path: Path) -> None:
    """Opening a 10,000-sample cache and reading one sample must not parse all its records."""
    built = ensure_cache(tmp_path, "train", list(range(10_000)), BulkyMetadataLoader(1_000))
    built.close()
    tracemalloc.start()
    try:
        dataset = CacheDataset(built.path)
        tensor, _ = dataset[0]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    dataset.close()
    assert int(tensor) == 0
    assert peak < FIRST_READ_BUDGET, (
        f"opening and reading sample 0 allocated {peak / 2**20:.1f} MiB (budget "
        f"{FIRST_READ_BUDGET / 2**20:.0f} MiB): the first read parses ~10 MB of records"
    )


def test_f14_header_over_the_safetensors_cap_is_named_as_such(tmp_path: Path) -> None:
    """A header length over 100 MB is refused for what it is, not as "exceeds the file"."""
    built = ensure_cache(tmp_path, "train", [0, 1], BulkyMetadataLoader(10))
    built.close()
    (shard,) = sorted(built.path.glob("shard-*"))
    with shard.open("r+b") as stream:  # what a shard written before headers were bounded says
        stream.write(struct.pack("<Q", 107_000_000))
    _, error = outcome(lambda: CacheDataset(built.path)[0])
    assert isinstance(error, CorruptCacheError), error
    assert "limit of 100000000" in str(error), error
    assert "exceeds what the file holds" not in str(error), error
