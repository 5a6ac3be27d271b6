"""One measurement in a fresh process: ``python -m benchmarks.measure SPEC.json OUT.json``.

`benchmarks.tiers_plan` runs this module through `benchmarks.harness` in a new
interpreter per measurement, so that nothing leaks between measurements: no loaded
samples, mappings, worker processes or allocator state. The page cache does carry over,
on purpose: the "warm" figures are about a cache whose files the kernel already holds.

Tasks:
    run: open the train subset of one tier through `CachingDataModule` and time its
        phases: ``prepare_data`` (disk build), ``setup`` (memory load, disk open), the
        first batch, the first epoch and warm epochs; then count decodes and take the
        memory of the process and its DataLoader workers. A build may go on with cold
        epochs (`benchmarks.cold`); a run may end with a digest of every served sample,
        in order (`served_digest`), for the tiers to be compared bit for bit.
    ddp: one rank of a two-rank gloo group: rank 0 prepares, every rank sets up and
        iterates a whole epoch, then each takes its memory while both are alive.
    references: physical references (`benchmarks.references`); the ``run`` task that
        builds the first disk cache takes them too.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import psutil
import torch

from benchmarks.cold import cold_epochs
from benchmarks.counting import CountingImageLoader, count_decodes
from benchmarks.harness import Task, child_main
from benchmarks.references import references

# Imported before any clock starts: Lightning takes seconds to import.
from shardcache.datamodule import CachingDataModule

MB = 1 << 20


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
    """The DataModule of the spec's tier: its ``cache`` and, for the disk tier, ``narrow``."""
    return CachingDataModule(
        {"train": items},
        make_loader(spec),
        batch_size=spec["batch_size"],
        parallel=spec["parallel"],
        cache=spec["cache"],
        cache_dir=spec.get("cache_dir"),
        narrow=spec.get("narrow", True),
    )


def cache_dir(spec: dict[str, Any]) -> str | None:
    """The disk tier's cache directory, as mapped paths spell it (absolute)."""
    if spec.get("cache") != "disk":
        return None
    return str(Path(spec["cache_dir"]).resolve())


def served_digest(module: CachingDataModule) -> str:
    """A digest of every sample the unshuffled train loader serves, in order, bit for bit.

    Through the same DataLoader and collator as training (narrow data widened in the batch
    buffer): tensors by their bytes, metadata by its JSON.
    """
    digest = hashlib.blake2b(digest_size=16)
    for tensor, metadata in module.unshuffled_train_dataloader():
        digest.update(str((tensor.dtype, tuple(tensor.shape))).encode())
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data)
        plain = {k: v.tolist() if torch.is_tensor(v) else v for k, v in metadata.items()}
        digest.update(json.dumps(plain, sort_keys=True).encode())
    return digest.hexdigest()


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
    result["load_average"] = os.getloadavg()
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
        if spec.get("cold_epochs"):  # nothing maps the cache here: its pages can be dropped
            result["cold"] = cold_epochs(lambda: datamodule(spec, items), spec["cold_epochs"])
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
    if spec.get("digest"):  # after the decode counts: tier none decodes the split again
        result["digest"] = served_digest(module)
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


TASKS: dict[str, Task] = {
    "run": run,
    "ddp": ddp,
    "references": references,
}


if __name__ == "__main__":
    child_main(TASKS)
