"""One measurement in a fresh process: ``python -m benchmarks.measure SPEC.json OUT.json``.

`benchmarks.tiers` writes a spec, runs this module in a new interpreter, and reads the
result back, so that nothing leaks between measurements: no loaded samples, mappings,
worker processes or allocator state. The page cache does carry over, on purpose: the
"warm" figures are about a cache whose files the kernel already holds.

Tasks:
    run: open the train subset of one tier through `CachingDataModule` and time its
        phases: ``prepare_data`` (disk build), ``setup`` (memory load, disk open), the
        first batch, the first epoch and warm epochs; then count decodes and take the
        memory of the process and its DataLoader workers.
    ddp: one rank of a two-rank gloo group: rank 0 prepares, every rank sets up and
        iterates a whole epoch, then each takes its memory while both are alive.
    references: physical references: memcpy of sample-sized tensors (one cache-hot sample,
        and a 256 MiB pool), sequential reads of the shard files from the page cache, and
        reads through the disk tier's mappings.
"""

from __future__ import annotations

import ctypes
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil
import torch

from benchmarks.counting import CountingImageLoader, count_decodes

# Imported before any clock starts: Lightning takes seconds to import.
from shardcache.datamodule import CachingDataModule

MB = 1 << 20
POOL_BYTES = 256 * MB
"""Source pool of the memcpy reference: well beyond any CPU cache..."""
POOL_SAMPLES = 4096
"""...in at most this many samples (tiny samples would time Python's loop, not memory)."""


# ---- helpers shared by the tasks ------------------------------------------------------------


def train_items(spec: dict[str, Any]) -> list[Any]:
    """The train items of the split; the ``4N`` variant lists each item 4 times.

    The copies differ by a third field, so their cache key differs, while the images on
    disk are the same: a bigger index without new image files.
    """
    from shardcache.loaders import read_json_split

    items = read_json_split(spec["split_path"])["train"]
    if spec.get("variant", "N") == "N":
        return items
    copies = int(spec["variant"].removesuffix("N"))
    return [[item[0], item[1], copy] for copy in range(copies) for item in items]


def make_loader(spec: dict[str, Any]) -> CountingImageLoader:
    return CountingImageLoader(
        spec["data_root"], mode=spec["mode"], decode_log=spec.get("decode_log")
    )


def release_freed_memory() -> None:
    """Return freed heap memory to the kernel (glibc keeps freed batch buffers for reuse).

    Without it, the last batches' buffers would count as memory the tier holds.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc: nothing to trim
    libc.malloc_trim(0)


def memory(process: psutil.Process, cache_dir: str | None = None) -> dict[str, float]:
    """RSS, PSS and USS of one process, in MiB (PSS splits shared pages among sharers).

    With ``cache_dir``, also the PSS of the mapped files under it: the disk tier's share
    of the page cache.
    """
    info = process.memory_full_info()
    result = {
        "rss_mb": info.rss / MB,
        "pss_mb": info.pss / MB,
        "uss_mb": info.uss / MB,
    }
    if cache_dir is not None:
        mapped = process.memory_maps(grouped=True)
        result["cache_pss_mb"] = sum(m.pss for m in mapped if m.path.startswith(cache_dir)) / MB
    return result


def memory_tree(cache_dir: str | None = None) -> dict[str, Any]:
    """Memory of this process and of its children (DataLoader workers), and the sums."""
    release_freed_memory()
    main = psutil.Process()
    processes = {"main": memory(main, cache_dir)}
    for number, child in enumerate(main.children(recursive=True)):
        try:
            processes[f"worker{number}"] = memory(child, cache_dir)
        except psutil.Error:
            continue  # exited meanwhile
    keys = processes["main"].keys()
    total = {key: sum(p[key] for p in processes.values()) for key in keys}
    return {"processes": processes, "total": total}


def datamodule(spec: dict[str, Any], items: list[Any]) -> CachingDataModule:
    return CachingDataModule(
        {"train": items},
        make_loader(spec),
        batch_size=spec["batch_size"],
        parallel=spec["parallel"],
        cache=spec["tier"],
        cache_dir=spec.get("cache_dir"),
    )


def cache_dir(spec: dict[str, Any]) -> str | None:
    """The disk tier's cache directory, as mapped paths spell it (absolute)."""
    if spec.get("tier") != "disk":
        return None
    return str(Path(spec["cache_dir"]).resolve())


def decodes(spec: dict[str, Any]) -> int | None:
    log = spec.get("decode_log")
    return None if log is None else count_decodes(log)


# ---- tasks ----------------------------------------------------------------------------------


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Time one tier's phases in this fresh process (see the module docstring)."""
    torch.manual_seed(spec.get("seed", 0))
    items = train_items(spec)
    release_freed_memory()
    result: dict[str, Any] = {"items": len(items), "baseline": memory(psutil.Process())}
    started = time.perf_counter()
    module = datamodule(spec, items)
    if spec.get("prepare"):
        module.prepare_data()
        result["prepare_s"] = time.perf_counter() - started
        result["decodes_prepare"] = decodes(spec)
        extra = spec.get("then_prepare_variant")
        if extra is not None:  # e.g. the 4N cache that the first-batch measurement needs
            mark = time.perf_counter()
            datamodule(spec, train_items({**spec, "variant": extra})).prepare_data()
            result["prepare_extra_s"] = time.perf_counter() - mark
        if spec.get("references"):  # the cache is ready and not mapped here yet
            result["references"] = references(spec)
    epochs = spec.get("epochs", 0)
    if epochs == 0 and not spec.get("first_batch_only"):
        return result
    mark = time.perf_counter()
    module.setup("fit")
    result["setup_s"] = time.perf_counter() - mark
    result["decodes_setup"] = decodes(spec)
    loader = module.train_dataloader()
    epoch_s: list[float] = []
    sample_bytes = 0
    for epoch in range(max(epochs, 1)):
        mark = time.perf_counter()
        served = 0
        for batch in loader:
            if not served and epoch == 0:
                result["first_batch_s"] = time.perf_counter() - started
                sample_bytes = batch[0][0].nbytes
            served += len(batch[0])
            if spec.get("first_batch_only"):
                break
        epoch_s.append(time.perf_counter() - mark)
        if spec.get("first_batch_only"):
            break
        if served != len(items):
            raise RuntimeError(f"epoch {epoch} served {served} samples, expected {len(items)}")
        if epoch == 0:
            result["decodes_first_epoch"] = decodes(spec)
    result["epoch_s"] = epoch_s
    result["sample_bytes"] = sample_bytes
    if not spec.get("first_batch_only"):
        # Persistent workers are still alive here. (Their freed memory is not trimmed.)
        result["memory"] = memory_tree(cache_dir(spec))
    result["decodes_total"] = decodes(spec)
    return result


def ddp(spec: dict[str, Any]) -> dict[str, Any]:
    """One rank of a two-rank job on CPU (see the module docstring)."""
    import torch.distributed as dist

    rank, world = spec["rank"], spec["world_size"]
    dist.init_process_group(
        "gloo", init_method=f"file://{spec['init_file']}", rank=rank, world_size=world
    )
    try:
        items = train_items(spec)
        release_freed_memory()
        result: dict[str, Any] = {"rank": rank, "baseline": memory(psutil.Process())}
        started = time.perf_counter()
        module = datamodule(spec, items)
        if rank == 0:  # what Lightning does: prepare_data on local rank 0, then a barrier
            module.prepare_data()
        dist.barrier()
        module.setup("fit")
        served = sum(len(batch[0]) for batch in module.train_dataloader())
        result["epoch_s"] = time.perf_counter() - started
        result["served"] = served
        dist.barrier()  # both ranks hold their data now: measure while both are alive
        release_freed_memory()
        result["memory"] = memory(psutil.Process(), cache_dir(spec))
        dist.barrier()
        result["decodes_total"] = decodes(spec)
        return result
    finally:
        dist.destroy_process_group()


def _rate(action: Callable[[], object], *, nbytes: int, min_seconds: float = 0.2) -> float:
    """Median bytes per second of ``action`` over 5 rounds of at least ``min_seconds``."""
    action()
    rates = []
    for _ in range(5):
        count, mark = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - mark) < min_seconds or count == 0:
            action()
            count += 1
        rates.append(nbytes * count / elapsed)
    return statistics.median(rates)


def references(spec: dict[str, Any]) -> dict[str, Any]:
    """Physical references on this machine (see the module docstring)."""
    from shardcache.store import CacheDataset, CacheRoot

    caches = [CacheDataset(path) for path in CacheRoot(Path(spec["cache_dir"])).published()]
    dataset = min(caches, key=len)  # the N split's cache, not the larger one
    path = dataset.path
    first, _ = dataset[0]
    shape, sample_bytes = tuple(first.shape), first.nbytes
    result: dict[str, Any] = {"sample_shape": list(shape), "sample_bytes": sample_bytes}

    # One thread: a physical per-core reference, and steady on a busy machine (two
    # intra-op threads on two shared cores wait on each other for milliseconds).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    source, target = torch.rand(shape), torch.empty(shape)
    result["memcpy_hot_gb_s"] = _rate(lambda: target.copy_(source), nbytes=sample_bytes) / 1e9
    # The same copies from a pool larger than the CPU caches, as the data set's samples
    # are: the reference that reads from the page cache compare with.
    pool = torch.rand(min(max(2, POOL_BYTES // sample_bytes), POOL_SAMPLES), *shape)

    def copy_pool() -> None:
        for sample in pool:
            target.copy_(sample)

    result["memcpy_gb_s"] = _rate(copy_pool, nbytes=pool.nbytes) / 1e9

    shards = sorted(path.glob("shard-*.safetensors"))
    total = sum(shard.stat().st_size for shard in shards)
    buffer = bytearray(8 * MB)
    view = memoryview(buffer)

    def read_all() -> None:
        for shard in shards:
            descriptor = os.open(shard, os.O_RDONLY)
            try:
                while os.readv(descriptor, [view]):
                    pass
            finally:
                os.close(descriptor)

    result["page_cache_read_gb_s"] = _rate(read_all, nbytes=total, min_seconds=0.1) / 1e9
    result["shard_bytes_read"] = total

    # Through the disk tier's mappings: the first pass faults the pages into this process.
    dataset = CacheDataset(path)
    count = len(dataset)
    mark = time.perf_counter()
    for index in range(count):
        target.copy_(dataset[index][0])
    first_pass = time.perf_counter() - mark
    result["mmap_first_touch_gb_s"] = count * sample_bytes / first_pass / 1e9

    def copy_all() -> None:
        for index in range(count):
            target.copy_(dataset[index][0])

    result["mmap_warm_copy_gb_s"] = _rate(copy_all, nbytes=count * sample_bytes) / 1e9

    # Per-sample overhead: CacheDataset.__getitem__ against a bare view of one mapping.
    def getitem_all() -> None:
        for index in range(count):
            dataset[index]

    result["getitem_us"] = 1e6 / _rate(getitem_all, nbytes=count, min_seconds=0.1)
    mapped = torch.UntypedStorage.from_file(
        str(shards[0]), shared=False, nbytes=shards[0].stat().st_size
    )
    stride = first.stride()

    def bare_views() -> None:
        for _ in range(count):
            torch.empty(0).set_(mapped, 0, shape, stride)

    result["bare_view_us"] = 1e6 / _rate(bare_views, nbytes=count, min_seconds=0.1)
    torch.set_num_threads(threads)
    return result


TASKS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "run": run,
    "ddp": ddp,
    "references": references,
}


def main(argv: Sequence[str] | None = None) -> None:
    spec_path, out_path = argv if argv is not None else sys.argv[1:]
    spec = json.loads(Path(spec_path).read_text())
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    result = TASKS[spec["task"]](spec)
    Path(out_path).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
