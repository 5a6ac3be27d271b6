"""One peers measurement in a fresh process: ``python -m benchmarks._peers_child SPEC OUT``.

`benchmarks.peers` writes a JSON spec, runs this module in a new interpreter (with a
timeout), and reads the JSON result back, so that no system's imports, mappings, worker
processes or allocator state leak into another's figures. The page cache does carry
over, on purpose: every figure is taken after a warm-up pass, on files the kernel holds.

Tasks:
    prepare: write the workload into the system's own format, unless a previous run did.
    loader: full shuffled epochs through the system's DataLoader (batch 32, 0 or 2
        workers): one warm-up epoch, then timed epochs; every epoch must serve each
        sample once, with its label; after timing, samples of the last batch are compared
        with the reference tensors.
    sequential: ``ds[i]`` for every ``i`` in order, warm-up pass then timed passes; after
        timing, a few samples are compared with the reference tensors.
    memcpy: ``copy_`` of one 32-sample batch into a preallocated buffer.
    profile: where the time of shardcache's disk tier, 0 workers, goes.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks._peers_workload import SyntheticTensorLoader, Workload, litdata_sample

CHUNK_BYTES = 1 << 26
"""Shard, chunk and MDS shard size: 64 MiB for every system, shardcache's default."""

WRITE_WORKERS = 2
"""Processes that write a format, where the system has a parallel writer."""

VERIFY_SAMPLES = 8
"""Samples compared with the reference after timing."""


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _tree_bytes(path: Path) -> int:
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


def _publish(staging: Path, final: Path) -> None:
    """Rename a finished staging directory into place (a half-written one is never reused)."""
    staging.rename(final)


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path


# ---- systems ---------------------------------------------------------------------------------


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
            return {"reused": True, "bytes": _tree_bytes(self.path), "path": str(self.path)}
        self.data_dir.mkdir(parents=True, exist_ok=True)
        staging = _fresh(self.data_dir / f".staging-{self.path.name}-{os.getpid()}")
        started = time.perf_counter()
        self.write(staging)
        _publish(staging, self.path)
        return {
            "reused": False,
            "write_s": time.perf_counter() - started,
            "bytes": _tree_bytes(self.path),
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
        result["bytes"] = _tree_bytes(dataset.path)
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


# ---- tasks -----------------------------------------------------------------------------------


def _check_equal(workload: Workload, tensor: torch.Tensor, label: int, index: int) -> None:
    expected = workload.tensor(index)
    if not torch.equal(tensor.reshape(expected.shape), expected):
        raise AssertionError(f"sample {index}: tensor differs from the reference")
    if label != workload.labels()[index]:
        raise AssertionError(f"sample {index}: label {label}, expected {workload.labels()[index]}")


def prepare(spec: dict[str, Any]) -> dict[str, Any]:
    return SYSTEMS[spec["system"]](spec).prepare()


def loader(spec: dict[str, Any]) -> dict[str, Any]:
    """Shuffled epochs through the system's loader (see the module docstring)."""
    torch.manual_seed(0)
    system = SYSTEMS[spec["system"]](spec)
    workload = system.workload
    count = workload.count
    labels = torch.tensor(workload.labels())
    batches = system.loader(spec["workers"])
    result: dict[str, Any] = {"epoch_s": [], "main_cpu_s": [], "minor_faults": []}
    last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    for epoch in range(1 + spec["repeats"]):
        seen: list[torch.Tensor] = []
        served_labels: list[torch.Tensor] = []
        faults, started, cpu = _minor_faults(), time.perf_counter(), time.process_time()
        for batch in batches:
            last = system.batch(batch)
            seen.append(last[2])
            served_labels.append(last[1])
        elapsed = time.perf_counter() - started
        if epoch == 0:
            result["warmup_s"] = elapsed
        else:
            result["epoch_s"].append(elapsed)
            result["main_cpu_s"].append(time.process_time() - cpu)
            result["minor_faults"].append(_minor_faults() - faults)
        indices = torch.cat(seen).long()
        if not torch.equal(indices.sort().values, torch.arange(count)):
            raise AssertionError(
                f"epoch {epoch} served {len(indices)} samples, not each of the {count} once"
            )
        if not torch.equal(torch.cat(served_labels).long(), labels[indices]):
            raise AssertionError(f"epoch {epoch}: labels differ from the reference")
    result["samples_per_s"] = count / statistics.median(result["epoch_s"])
    assert last is not None
    tensors, batch_labels, batch_indices = last
    for position in range(min(VERIFY_SAMPLES // 2, len(tensors))):
        _check_equal(
            workload,
            tensors[position],
            int(batch_labels[position]),
            int(batch_indices[position]),
        )
    result["verified"] = min(VERIFY_SAMPLES // 2, len(tensors))
    result["sample_bytes"] = tensors[0].nbytes
    if isinstance(system, ShardcacheSystem):
        result["setup_s"] = system.setup_s
    return result


def sequential(spec: dict[str, Any]) -> dict[str, Any]:
    """``ds[i]`` for every ``i``, in order (see the module docstring)."""
    system = SYSTEMS[spec["system"]](spec)
    workload = system.workload
    dataset = system.dataset()
    count = len(dataset)
    if count != workload.count:
        raise AssertionError(f"the dataset has {count} samples, expected {workload.count}")
    pass_s = []
    for repeat in range(1 + spec["repeats"]):
        started = time.perf_counter()
        for index in range(count):
            dataset[index]
        if repeat:
            pass_s.append(time.perf_counter() - started)
    result: dict[str, Any] = {"pass_s": pass_s, "reads_per_s": count / statistics.median(pass_s)}
    step = max(1, count // VERIFY_SAMPLES)
    positions = sorted({*range(0, count, step), count - 1})[: VERIFY_SAMPLES + 1]
    indices = []
    for position in positions:
        tensor, label, index = system.sample(dataset[position])
        _check_equal(workload, tensor, label, index)
        indices.append(index)
    result["verified"] = len(positions)
    return result


def memcpy(spec: dict[str, Any]) -> dict[str, Any]:
    """``copy_`` of one batch (batch_size samples) into a preallocated buffer."""
    shape = (spec.get("batch_size", 32), *Workload(1).shape)
    source, target = torch.rand(shape), torch.empty(shape)
    nbytes = source.nbytes
    target.copy_(source)
    rates = []
    for _ in range(7):
        count, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < 0.3 or count == 0:
            target.copy_(source)
            count += 1
        rates.append(nbytes * count / elapsed / 1e9)
    return {"gb_s": statistics.median(rates), "batch_bytes": nbytes, "rounds_gb_s": rates}


class _Clocks:
    """Wall and CPU seconds spent in named stages (CPU time: what other load cannot inflate)."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._stage = ""
        self._marks = (0.0, 0.0)

    def start(self, stage: str) -> None:
        self._stage = stage
        self._marks = (time.perf_counter(), time.process_time())

    def stop(self) -> None:
        wall, cpu = self._marks
        self.wall[self._stage] = self.wall.get(self._stage, 0.0) + time.perf_counter() - wall
        self.cpu[self._stage] = self.cpu.get(self._stage, 0.0) + time.process_time() - cpu


def profile(spec: dict[str, Any]) -> dict[str, Any]:
    """Where an epoch of the disk tier with 0 workers goes: each stage timed apart.

    Each round times one epoch of the loader itself, then the same work by hand, stage by
    stage: the sampler's index batches, ``dataset[i]``, the collator's whole call, and,
    apart, its two parts (the metadata's ``default_collate`` and ``torch.stack`` into a
    buffer). What the stages leave of the loader's epoch is the DataLoader's own
    machinery. Wall and CPU time are both kept: on a loaded machine the CPU time of each
    stage is the steadier figure.
    """
    from torch.utils.data import default_collate

    system = ShardcacheSystem(spec)
    rounds = max(spec["repeats"], 5)
    loader: Any = system.loader(0)
    dataset, collate = loader.dataset, loader.collate_fn
    count = len(dataset)
    for _ in loader:  # warm-up: maps the shards, allocates the batch buffers
        pass
    first, _ = dataset[0]
    buffer = torch.empty((loader.batch_size, *first.shape), dtype=first.dtype)
    buffer.zero_()  # faulted in now, not in the first timed stack
    runs: list[_Clocks] = []
    faults = []
    for _ in range(rounds):
        clocks = _Clocks()
        mark = _minor_faults()
        clocks.start("loader_epoch")
        for _ in loader:
            pass
        clocks.stop()
        faults.append(_minor_faults() - mark)
        clocks.start("sampler")
        index_batches = list(loader.batch_sampler)
        clocks.stop()
        for indices in index_batches:
            clocks.start("getitem")
            samples = [dataset[i] for i in indices]
            clocks.stop()
            clocks.start("collator")
            batch = collate(samples)
            clocks.stop()
            del batch
            clocks.start("metadata_collate")
            default_collate([sample[1] for sample in samples])
            clocks.stop()
            out = buffer[: len(samples)]
            clocks.start("stack")
            torch.stack([sample[0] for sample in samples], out=out)
            clocks.stop()
        runs.append(clocks)

    def medians(clock: str) -> dict[str, float]:
        names = runs[0].wall
        return {
            name: statistics.median(getattr(run, clock)[name] for run in runs) for name in names
        }

    def derived(values: dict[str, float]) -> dict[str, float]:
        return {
            **values,
            "collator_other": values["collator"] - values["metadata_collate"] - values["stack"],
            "dataloader_other": values["loader_epoch"]
            - values["sampler"]
            - values["getitem"]
            - values["collator"],
        }

    # The copy's speed from the cache's file-backed mapping against from anonymous memory.
    batch_count = min(count, loader.batch_size)
    mapped = [dataset[i][0] for i in range(batch_count)]
    in_memory = [tensor.clone() for tensor in mapped]

    def stack_rate(tensors: list[torch.Tensor]) -> float:
        out = buffer[: len(tensors)]
        measured = []
        for _ in range(5):
            started, done = time.perf_counter(), 0
            while time.perf_counter() - started < 0.2 or not done:
                torch.stack(tensors, out=out)
                done += 1
            measured.append(out.nbytes * done / (time.perf_counter() - started) / 1e9)
        return statistics.median(measured)

    return {
        "samples": count,
        "rounds": rounds,
        "wall_s": derived(medians("wall")),
        "cpu_s": derived(medians("cpu")),
        "runs_wall_s": [run.wall for run in runs],
        "runs_cpu_s": [run.cpu for run in runs],
        "loader_minor_faults": faults,
        "stack_from_mmap_gb_s": stack_rate(mapped),
        "stack_from_memory_gb_s": stack_rate(in_memory),
        "sample_bytes": first.nbytes,
        "torch_threads": torch.get_num_threads(),
    }


TASKS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "prepare": prepare,
    "loader": loader,
    "sequential": sequential,
    "memcpy": memcpy,
    "profile": profile,
}


def main(argv: Sequence[str] | None = None) -> None:
    spec_path, out_path = argv if argv is not None else sys.argv[1:]
    spec = json.loads(Path(spec_path).read_text())
    if spec.get("torch_threads"):
        torch.set_num_threads(spec["torch_threads"])
    result = TASKS[spec["task"]](spec)
    result.setdefault("torch_threads", torch.get_num_threads())
    Path(out_path).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
