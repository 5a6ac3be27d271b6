"""The writer's automatic shard size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from shardcache.store import ensure_cache
from shardcache.store.options import MIN_SHARD_BYTES, automatic_shard_bytes

MIB = 1 << 20


class QuarterMebibyteLoader:
    """Sample i: 256 KiB of float32 filled with i + 0.5 (not narrowable: stored as float32)."""

    def sample(self, item: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        return torch.full((64, 1024), item + 0.5), {}

    def label(self, item: Any) -> int:
        return int(item) % 2


def test_automatic_shard_bytes_is_a_32nd_between_the_bounds() -> None:
    assert automatic_shard_bytes(10 * MIB) == MIN_SHARD_BYTES == 4 * MIB
    assert automatic_shard_bytes(1024 * MIB) == 32 * MIB
    assert automatic_shard_bytes(100_000 * MIB) == 64 * MIB


def test_a_small_build_gets_small_shards(tmp_path: Path) -> None:
    items = list(range(64))  # 16 MiB decoded: 4 MiB shards, 16 samples each
    dataset = ensure_cache(tmp_path, "train", items, QuarterMebibyteLoader())
    sizes = [(shard.stop - shard.start) for shard in dataset.manifest.shards]
    assert sizes == [16, 16, 16, 16]
    assert all(torch.equal(dataset[i][0], torch.full((64, 1024), i + 0.5)) for i in items)


def test_an_explicit_shard_size_wins(tmp_path: Path) -> None:
    dataset = ensure_cache(
        tmp_path, "train", list(range(8)), QuarterMebibyteLoader(), shard_bytes=MIB
    )
    assert [(shard.start, shard.stop) for shard in dataset.manifest.shards] == [(0, 4), (4, 8)]
