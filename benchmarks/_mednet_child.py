"""One measurement of `benchmarks.mednet` in a fresh process (``python -m`` it with SPEC OUT).

Tasks:
    run: build the system's data module (mednet's own with ``cache_samples=True``, or
        ``shardcache.mednet`` with ``cache="disk"``), set it up for ``fit`` as
        ``mednet train`` does, and time the first training batch and the first epoch (from
        construction) and `WARM_EPOCHS` warm epochs (their median); count decodes. With
        ``cold``, what the run reads (PNGs, or shards) is first dropped from the page cache.
    ranks: one of two ranks of a gloo group: both set up and iterate an epoch, then each
        takes its memory while both are alive.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import psutil
import torch
from mednet.data.datamodule import CachingDataModule as MednetCachingDataModule
from mednet.data.typing import RawDataLoader
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms.v2.functional import to_dtype, to_image

from benchmarks import pagecache
from benchmarks.counting import count_decodes
from benchmarks.harness import Task, child_main
from shardcache.loaders import read_json_split
from shardcache.mednet import CachingDataModule

MB = 1 << 20
WARM_EPOCHS = 5
"""Warm epochs timed per run; their median is the run's figure (one small epoch is noisy)."""


class PngRawDataLoader(RawDataLoader):
    """What mednet's database loaders do: PIL, ``to_dtype(scale=True)``, a tv_tensors Image."""

    shardcache_key_ignores = ("_decode_log",)

    def __init__(self, root: str, decode_log: str) -> None:
        self.root = Path(root)
        self._decode_log = decode_log

    def sample(self, item: Any) -> dict[str, Any]:
        descriptor = os.open(self._decode_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, b"1\n")
        finally:
            os.close(descriptor)
        image = to_dtype(to_image(Image.open(self.root / item[0])), torch.float32, scale=True)
        return {"image": tv_tensors.Image(image), "target": self.target(item), "name": item[0]}

    def target(self, item: Any) -> torch.Tensor:
        return torch.FloatTensor([item[1]])


def _datamodule(spec: dict[str, Any], log: str) -> Any:
    split = read_json_split(spec["split_path"])
    loader = PngRawDataLoader(spec["data_root"], log)
    keywords: dict[str, Any] = {
        "database_name": "synthetic",
        "split_name": "default",
        "task": "classification",
        "num_classes": 1,
        "batch_size": spec["batch_size"],
    }
    if spec["system"] == "mednet":
        module = MednetCachingDataModule(split, loader, cache_samples=True, **keywords)
    else:
        module = CachingDataModule(
            split, loader, cache="disk", cache_dir=spec["cache_dir"], **keywords
        )
    module.model_transforms = []  # as mednet's scripts assign them (none here)
    return module


def _log(spec: dict[str, Any]) -> str:
    return str(Path(spec["cache_dir"]).parent / f"decodes-{os.getpid()}")


def _input_files(spec: dict[str, Any]) -> list[Path]:
    """What a run of the system reads: mednet's PNGs, or shardcache's shards."""
    if spec["system"] == "mednet":
        return sorted(Path(spec["data_root"]).rglob("*.png"))
    return sorted(Path(spec["cache_dir"]).rglob("*.safetensors"))


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """The first batch of a run, a warm epoch, and the decodes (see the module docstring).

    With ``cold``, the pages of what the run reads are dropped from the page cache first.
    """
    log = _log(spec)
    dropped = pagecache.drop(_input_files(spec)) if spec.get("cold") else {}
    started = time.perf_counter()
    module = _datamodule(spec, log)
    module.prepare_data()
    module.setup("fit")
    loader = module.train_dataloader()
    served = 0
    first_batch_s = None
    for batch in loader:
        if first_batch_s is None:
            first_batch_s = time.perf_counter() - started
        served += len(batch["image"])
    first_epoch_s = time.perf_counter() - started
    rates = []
    for _ in range(spec.get("warm_epochs", WARM_EPOCHS)):
        mark = time.perf_counter()
        warm = sum(len(batch["image"]) for batch in loader)
        rates.append(warm / (time.perf_counter() - mark))
    return {
        "first_batch_s": first_batch_s,
        "first_epoch_s": first_epoch_s,
        "warm_samples_per_s": statistics.median(rates),
        "samples": served,
        "decodes": count_decodes(log),
        "resident_after_drop": dropped.get("resident_after"),
    }


def ranks(spec: dict[str, Any]) -> dict[str, Any]:
    """One of two ranks holding the training subset at once (see the module docstring)."""
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{spec['init_file']}", rank=spec["rank"], world_size=2
    )
    try:
        log = _log(spec)
        module = _datamodule(spec, log)
        if spec["rank"] == 0:  # Lightning's prepare_data: one rank per node
            module.prepare_data()
        dist.barrier()
        module.setup("fit")
        served = sum(len(batch["image"]) for batch in module.train_dataloader())
        dist.barrier()  # both hold their data now
        info = psutil.Process().memory_full_info()
        dist.barrier()
        return {"pss_mb": info.pss / MB, "served": served, "decodes": count_decodes(log)}
    finally:
        dist.destroy_process_group()


TASKS: dict[str, Task] = {"run": run, "ranks": ranks}

if __name__ == "__main__":
    child_main(TASKS)
