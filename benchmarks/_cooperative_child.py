"""One rank of a first-build job for `benchmarks.cooperative` (``python -m`` by the harness).

The ranks meet in a gloo group (a ``file://`` rendezvous), then build one disk-tier cache
the way `CachingDataModule` does in a Lightning job of that many ranks:

- ``single``: local rank 0 of each node builds in ``prepare_data`` (`DiskTier.prepare`)
  while the other ranks wait in a barrier, then every rank opens the cache;
- ``cooperative``: every rank calls `DiskTier.open_all` with ``distributed`` options,
  as ``setup`` does: the ranks decode a slice each, one publishes.

Each rank times from the barrier that starts the build to its cache being open.
"""

from __future__ import annotations

import time
from typing import Any

import torch.distributed as dist

from benchmarks.counting import CountingImageLoader, count_decodes
from benchmarks.harness import Task, child_main
from shardcache.loaders import read_json_split
from shardcache.tiers import Subset, TierOptions, make_tier


def rank(spec: dict[str, Any]) -> dict[str, Any]:
    """Build (or help build) the cache as one rank of the job; the seconds it took."""
    dist.init_process_group(
        "gloo",
        init_method=f"file://{spec['init_file']}",
        rank=spec["rank"],
        world_size=spec["world_size"],
    )
    try:
        items = read_json_split(spec["split_path"])["train"]
        size = [spec["thumbnail"]] * 2 if spec.get("thumbnail") else None
        loader = CountingImageLoader(
            spec["data_root"], mode="gray", size=size, decode_log=spec["decode_log"]
        )
        subset = Subset("train", items, loader, spec["parallel"])
        cooperative = spec["builder"] == "cooperative"
        options = TierOptions(cache_dir=spec["cache_dir"], distributed=cooperative)
        tier = make_tier("disk", options)
        dist.barrier()
        started = time.perf_counter()
        if not cooperative:
            if spec["rank"] % spec["ranks_per_node"] == 0:
                tier.prepare(subset)
            dist.barrier()  # Lightning's, around prepare_data
        (dataset,) = tier.open_all([subset])
        seconds = time.perf_counter() - started
        served = len(dataset)
        dataset.close()
        dist.barrier()
        return {
            "rank": spec["rank"],
            "seconds": seconds,
            "served": served,
            "decodes": count_decodes(spec["decode_log"]),
        }
    finally:
        dist.destroy_process_group()


TASKS: dict[str, Task] = {"rank": rank}

if __name__ == "__main__":
    child_main(TASKS)
