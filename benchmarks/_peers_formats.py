"""How each system of `benchmarks.peers` writes the workload and reads it back.

`benchmarks._peers_child` runs these in fresh processes: ``prepare`` writes a format once
(into a staging directory renamed into place), ``loader`` and ``dataset`` read it.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from benchmarks._peers_workload import SyntheticTensorLoader, Workload, litdata_sample
from benchmarks.harness import tree_bytes

CHUNK_BYTES = 1 << 26
"""Shard, chunk and MDS shard size: 64 MiB for every system, shardcache's default."""

WRITE_WORKERS = 2
"""Processes that write a format, where the system has a parallel writer."""


def _publish(staging: Path, final: Path) -> None:
    """Rename a finished staging directory into place (a half-written one is never reused)."""
    staging.rename(final)


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path


class System:
    """How one system writes the workload, and reads it back.

    Args:
        spec: the measurement spec (``count``, ``data_dir``, ``batch_size``...).
    """

    format_name = ""
    """Directory of the written format under the data directory ('' when none)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.workload = Workload(spec["count"])
        self.batch_size: int = spec.get("batch_size", 32)
        self.data_dir = Path(spec["data_dir"])

    @property
    def path(self) -> Path:
        """Where this system's copy of the workload lives."""
        return self.data_dir / f"{self.format_name}-n{self.workload.count}"

    def prepare(self) -> dict[str, Any]:
        """Write the workload unless it is there already; returns what was done."""
        if self.path.is_dir():
            return {"reused": True, "bytes": tree_bytes(self.path), "path": str(self.path)}
        self.data_dir.mkdir(parents=True, exist_ok=True)
        staging = _fresh(self.data_dir / f".staging-{self.path.name}-{os.getpid()}")
        started = time.perf_counter()
        self.write(staging)
        _publish(staging, self.path)
        return {
            "reused": False,
            "write_s": time.perf_counter() - started,
            "bytes": tree_bytes(self.path),
            "path": str(self.path),
        }

    def write(self, staging: Path) -> None:
        """Write the workload into ``staging`` (renamed into place afterwards)."""
        raise NotImplementedError

    def loader(self, workers: int) -> Iterable[Any]:
        """The shuffled batch-32 loader with ``workers`` worker processes."""
        raise NotImplementedError

    def batch(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x, labels, indices)`` of one batch."""
        return batch["x"], batch["y"], batch["i"]

    def dataset(self) -> Any:
        """An indexable dataset in written order, for sequential reads."""
        raise NotImplementedError

    def sample(self, value: Any) -> tuple[torch.Tensor, int, int]:
        """``(x, label, index)`` of one ``dataset()[i]``."""
        return torch.as_tensor(value["x"]), int(value["y"]), int(value["i"])


class ShardcacheSystem(System):
    """shardcache through `CachingDataModule`, so that its loaders' `BatchCollator` is used."""

    tier = "disk"

    @property
    def path(self) -> Path:
        return self.data_dir / "shardcache"

    def _loader(self) -> SyntheticTensorLoader:
        return SyntheticTensorLoader(self.workload.shape, self.workload.seed)

    def prepare(self) -> dict[str, Any]:
        if self.tier != "disk":
            return {"reused": True, "bytes": 0, "note": "the memory tier writes no files"}
        from shardcache.store import CacheRoot, cache_key, ensure_cache

        items = self.workload.items()
        key = cache_key("train", items, self._loader())
        reused = CacheRoot(self.path).find(key.digest) is not None
        started = time.perf_counter()
        dataset = ensure_cache(self.path, "train", items, self._loader(), parallel=WRITE_WORKERS)
        elapsed = time.perf_counter() - started
        dataset.close()
        result: dict[str, Any] = {"reused": reused, "path": str(dataset.path)}
        result["bytes"] = tree_bytes(dataset.path)
        if not reused:
            result["write_s"] = elapsed
        return result

    def datamodule(self, workers: int) -> Any:
        from shardcache.datamodule import CachingDataModule

        module = CachingDataModule(
            {"train": self.workload.items()},
            self._loader(),
            batch_size=self.batch_size,
            parallel=workers if workers else -1,
            cache=self.tier,
            cache_dir=self.path,
        )
        module.prepare_data()
        started = time.perf_counter()
        module.setup("fit")
        self.setup_s = time.perf_counter() - started
        return module

    def loader(self, workers: int) -> Iterable[Any]:
        return self.datamodule(workers).train_dataloader()  # type: ignore[no-any-return]

    def batch(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tensor, metadata = batch
        return tensor, metadata["label"], metadata["index"]

    def dataset(self) -> Any:
        return self.datamodule(0).train_dataloader().dataset

    def sample(self, value: Any) -> tuple[torch.Tensor, int, int]:
        tensor, metadata = value
        return tensor, int(metadata["label"]), int(metadata["index"])


class ShardcacheMemorySystem(ShardcacheSystem):
    """shardcache's memory tier: every sample decoded into RAM at setup."""

    tier = "memory"


class LitDataSystem(System):
    """LitData: ``optimize`` into its chunk format; `StreamingDataset` + `StreamingDataLoader`."""

    format_name = "litdata"

    def write(self, staging: Path) -> None:
        from litdata import optimize

        workload = self.workload
        labels = workload.labels()
        jobs = [[workload.seed, list(workload.shape), i, labels[i]] for i in range(workload.count)]
        optimize(
            fn=litdata_sample,
            inputs=jobs,
            output_dir=str(staging),
            chunk_bytes=CHUNK_BYTES,
            num_workers=WRITE_WORKERS,
            verbose=False,
        )

    def loader(self, workers: int) -> Iterable[Any]:
        from litdata import StreamingDataLoader, StreamingDataset

        dataset = StreamingDataset(str(self.path), shuffle=True)
        return StreamingDataLoader(  # type: ignore[no-any-return]
            dataset,
            batch_size=self.batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
        )

    def dataset(self) -> Any:
        from litdata import StreamingDataset

        return StreamingDataset(str(self.path))


def _hf_generate(count: int) -> Iterable[dict[str, Any]]:
    workload = Workload(count)
    labels = workload.labels()
    for index in range(count):
        yield {"x": workload.array(index), "y": labels[index], "i": index}


class HFDatasetsSystem(System):
    """HF datasets: ``Dataset.from_generator`` with an Array3D feature, ``save_to_disk``,
    ``load_from_disk(...).with_format("torch")`` through a torch DataLoader."""

    format_name = "hf-datasets"
    output_format = "torch"

    def write(self, staging: Path) -> None:
        import datasets

        datasets.disable_progress_bars()
        features = datasets.Features(
            {
                "x": datasets.Array3D(shape=self.workload.shape, dtype="float32"),
                "y": datasets.Value("int64"),
                "i": datasets.Value("int64"),
            }
        )
        scratch = _fresh(staging.with_name(staging.name + "-generator-cache"))
        try:
            generated = datasets.Dataset.from_generator(
                _hf_generate,
                features=features,
                gen_kwargs={"count": self.workload.count},
                cache_dir=str(scratch),
            )
            generated.save_to_disk(str(staging))
            del generated
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def dataset(self) -> Any:
        import datasets

        datasets.disable_progress_bars()
        return datasets.load_from_disk(str(self.path)).with_format(self.output_format)

    def loader(self, workers: int) -> Iterable[Any]:
        from torch.utils.data import DataLoader

        return DataLoader(
            self.dataset(),
            batch_size=self.batch_size,
            shuffle=True,
            num_workers=workers,
            persistent_workers=workers > 0,
        )


class HFDatasetsNumpySystem(HFDatasetsSystem):
    """HF datasets, same files, ``with_format("numpy")``: torch's collate makes the tensors."""

    output_format = "numpy"


class MosaicStreamingSystem(System):
    """MosaicML Streaming: `MDSWriter` with an ndarray column; its `StreamingDataset`
    (``local=`` only) through a torch DataLoader."""

    format_name = "mosaicml-streaming"

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        # Its numpy samples are read-only: torch warns once when collating them.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

    def write(self, staging: Path) -> None:
        from streaming import MDSWriter

        workload = self.workload
        labels = workload.labels()
        channels, height, width = workload.shape
        columns = {"x": f"ndarray:float32:{channels},{height},{width}", "y": "int", "i": "int"}
        with MDSWriter(out=str(staging), columns=columns, size_limit=CHUNK_BYTES) as writer:
            for index in range(workload.count):
                writer.write({"x": workload.array(index), "y": labels[index], "i": index})

    def _dataset(self, *, shuffle: bool) -> Any:
        from streaming import StreamingDataset
        from streaming.base.util import clean_stale_shared_memory

        clean_stale_shared_memory()
        return StreamingDataset(local=str(self.path), shuffle=shuffle, batch_size=self.batch_size)

    def loader(self, workers: int) -> Iterable[Any]:
        from torch.utils.data import DataLoader

        return DataLoader(
            self._dataset(shuffle=True),
            batch_size=self.batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
        )

    def dataset(self) -> Any:
        return self._dataset(shuffle=False)


SYSTEMS: dict[str, type[System]] = {
    "shardcache-disk": ShardcacheSystem,
    "shardcache-memory": ShardcacheMemorySystem,
    "litdata": LitDataSystem,
    "hf-datasets": HFDatasetsSystem,
    "hf-datasets-numpy": HFDatasetsNumpySystem,
    "mosaicml-streaming": MosaicStreamingSystem,
}
