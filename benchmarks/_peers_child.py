"""One peers measurement in a fresh process: ``python -m benchmarks._peers_child SPEC OUT``.

`benchmarks.peers` runs this module through `benchmarks.harness` in a new interpreter
(with a timeout) for every figure, so that no system's imports, mappings, worker
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
    profile: where the time of shardcache's disk tier, 0 workers, goes
        (`benchmarks.stages`).
"""

from __future__ import annotations

import resource
import statistics
import time
from typing import Any

import torch

from benchmarks._peers_formats import SYSTEMS, ShardcacheSystem
from benchmarks._peers_workload import Workload
from benchmarks.harness import Task, child_main, timed_rates

VERIFY_SAMPLES = 8
"""Samples compared with the reference after timing."""


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


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
    rates = timed_rates(lambda: target.copy_(source), amount=nbytes, rounds=7, min_seconds=0.3)
    rates = [rate / 1e9 for rate in rates]
    return {"gb_s": statistics.median(rates), "batch_bytes": nbytes, "rounds_gb_s": rates}


def profile(spec: dict[str, Any]) -> dict[str, Any]:
    """Where an epoch of the disk tier with 0 workers goes: every stage timed where it runs.

    `benchmarks.stages.profile_loader` alternates plain epochs with epochs whose stage
    functions are wrapped in timers of exclusive time. Then the copy's rate (one
    ``memmove`` per sample, as the collator copies) from the cache's file-backed mapping
    and from anonymous memory.
    """
    from benchmarks.stages import copy_rate_gb_s, profile_loader

    system = ShardcacheSystem(spec)
    loader: Any = system.loader(0)
    result = profile_loader(loader, max(spec["repeats"], 5))
    dataset = loader.dataset
    first, _ = dataset[0]
    buffer = torch.empty((loader.batch_size, *first.shape), dtype=first.dtype)
    buffer.zero_()  # faulted in now, not in the first timed copy
    mapped = [dataset[i][0] for i in range(min(len(dataset), loader.batch_size))]
    in_memory = [tensor.clone() for tensor in mapped]
    result["copy_from_mmap_gb_s"] = copy_rate_gb_s(mapped, buffer)
    result["copy_from_memory_gb_s"] = copy_rate_gb_s(in_memory, buffer)
    result["sample_bytes"] = first.nbytes
    result["torch_threads"] = torch.get_num_threads()
    return result


TASKS: dict[str, Task] = {
    "prepare": prepare,
    "loader": loader,
    "sequential": sequential,
    "memcpy": memcpy,
    "profile": profile,
}


if __name__ == "__main__":
    child_main(TASKS, record_threads=True)
