"""Batch assembly alone: default_collate against BatchCollator on a disk-tier cache.

python -m benchmarks.collate [--items 1000] [--repeats 3]

Builds (once, under bench-data/collate/) a cache of float32 [1, 512, 512] samples (1 MiB)
and reads it through a stock DataLoader, batch 32, shuffled, num_workers 0 and 2, with
torch's default_collate and with shardcache's BatchCollator; prints medians of warm epochs
and their ratio (`benchmarks.harness`). All four run in this one process, one after another.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from benchmarks.harness import median, ratio, text_table
from shardcache.serving.collate import BatchCollator
from shardcache.store import CacheDataset, ensure_cache


class SeededNoise:
    """Sample i: seeded uniform noise, 1 MiB of float32."""

    def sample(self, item: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        generator = torch.Generator().manual_seed(int(item))
        return torch.rand((1, 512, 512), generator=generator), {"name": f"s{item}"}

    def label(self, item: Any) -> int:
        return int(item) % 2


def epochs_per_second(
    dataset: CacheDataset, workers: int, pooled: bool, repeats: int
) -> float | None:
    loader = DataLoader(
        dataset,
        batch_size=32,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        collate_fn=BatchCollator(workers, workers > 0) if pooled else None,
    )
    rates = []
    for repeat in range(repeats + 1):  # the first epoch warms the mappings and workers
        start = time.perf_counter()
        count = sum(batch[0].shape[0] for batch in loader)
        if repeat:
            rates.append(count / (time.perf_counter() - start))
    return median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=Path("bench-data/collate"))
    args = parser.parse_args()
    dataset = ensure_cache(args.data_dir, "train", list(range(args.items)), SeededNoise())
    print(
        f"{args.items} samples of 1 MiB, batch 32, shuffled; warm epochs, median of {args.repeats}"
    )
    rows = []
    for workers in (0, 2):
        plain = epochs_per_second(dataset, workers, pooled=False, repeats=args.repeats)
        pooled = epochs_per_second(dataset, workers, pooled=True, repeats=args.repeats)
        speedup = ratio(pooled, plain)
        shown = [f"{value:,.0f} /s" if value is not None else "-" for value in (plain, pooled)]
        rows.append([str(workers), *shown, "-" if speedup is None else f"{speedup:.2f}x"])
    header = ["num_workers", "default_collate", "BatchCollator", "ratio"]
    print(text_table(header, rows, align="rrrr"))


if __name__ == "__main__":
    main()
