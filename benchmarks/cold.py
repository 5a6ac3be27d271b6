"""Cold epochs of the disk tier: every shard page dropped from the page cache just before.

Run by `benchmarks.measure` in the process that built the cache (nothing maps it there
yet). First the disk's cold sequential read bandwidth for the cache's own shard files
(`benchmarks.pagecache.sequential_read_mb_s`), then ``count`` cold epochs, each as a new
training run starts one: drop the shards' pages and check with ``mincore`` how many stayed,
then, timed, ``setup`` a new DataModule (it opens and maps the shards and asks the disk for
their headers, `shardcache.store.readahead`) and iterate one shuffled epoch of
``train_dataloader()``; tear down (the mappings and DataLoader workers go, so the next drop
can evict). With workers, an epoch's time includes starting them, as a run's first does.
Each epoch also counts its major page faults (those that waited for the disk), workers'
included.
"""

from __future__ import annotations

import gc
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import pagecache


def _major_faults() -> int:
    """Page faults that waited for the disk, of this process and its finished children."""
    return sum(
        resource.getrusage(who).ru_majflt
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )


def shard_files(module: Any) -> list[Path]:
    """The shard files of a set-up DataModule's train cache (from its manifest)."""
    dataset = module.train_dataloader().dataset  # ServedDataset passes `path`, `manifest`
    return [Path(dataset.path) / shard.file for shard in dataset.manifest.shards]


def cold_epoch(make_module: Callable[[], Any], files: list[Path]) -> dict[str, Any]:
    """One epoch of a fresh DataModule right after its shards' pages were dropped."""
    module = make_module()
    dropped = pagecache.drop(files)
    served, first_batch_s, first_batch_size = 0, None, 0
    faults = _major_faults()
    started = time.perf_counter()
    module.setup("fit")
    loader = module.train_dataloader()
    for tensor, _ in loader:
        if first_batch_s is None:
            first_batch_s, first_batch_size = time.perf_counter() - started, len(tensor)
        served += len(tensor)
    seconds = time.perf_counter() - started
    module.teardown("fit")
    del loader, module, tensor  # the DataLoader's persistent workers exit with it
    gc.collect()
    faults = _major_faults() - faults  # the workers' count once they have exited
    rest = seconds - (first_batch_s or 0.0)
    return {
        "seconds": seconds,
        "served": served,
        "samples_per_s": served / seconds,
        "first_batch_s": first_batch_s,
        "after_first_batch_samples_per_s": (served - first_batch_size) / rest if rest else None,
        "major_faults": faults,
        **dropped,
    }


def cold_epochs(make_module: Callable[[], Any], count: int) -> dict[str, Any]:
    """The cold read bandwidth of the cache's shard files, then ``count`` cold epochs."""
    module = make_module()
    module.setup("fit")
    files = shard_files(module)
    module.teardown("fit")
    del module
    read = pagecache.sequential_read_mb_s(files)
    epochs = [cold_epoch(make_module, files) for _ in range(count)]
    return {
        "files": len(files),
        "bytes": sum(path.stat().st_size for path in files),
        "read": read,
        "epochs": epochs,
        "samples_per_s": statistics.median(epoch["samples_per_s"] for epoch in epochs),
        "resident_after_drop": max(epoch["resident_after"] for epoch in epochs),
    }
