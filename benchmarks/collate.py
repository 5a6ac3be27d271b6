"""Batch assembly through ``train_dataloader()``: the float32 path, narrow storage, held batches.

python -m benchmarks.collate [--items 1000] [--rounds 5] [--parts float32,narrow,held,profile]

Everything runs in this one process, the loaders compared in the same run with their
epochs alternated (the order rotates each round), after a warm-up epoch each; figures are
medians of the timed epochs, ratios between medians (`benchmarks.harness`). Data (built
once under ``bench-data/collate/``): N samples float32 ``[1, 512, 512]`` (1 MiB) of 8-bit
noise loaded as ``k / 255`` (`benchmarks.collate_data.SeededLevels`), cached twice by the
disk tier, narrow (uint8 on disk) and with ``narrow=False`` (float32 on disk).

Parts:
    float32: the float32 cache through ``CachingDataModule(cache="disk", narrow=False)
        .train_dataloader()`` against a stock DataLoader (``default_collate``) over
        hand-rolled safetensors mmap views of the same shard files
        (`benchmarks.collate_data.SafetensorsViews`), 0 and 2 workers.
    narrow: the narrow cache's ``train_dataloader()`` against the float32 one's, 0 and 2
        workers; and served batches compared bit for bit (unshuffled, every batch).
    held: 512 samples of 256 KiB (float noise), 2 workers, batch 32: one DataModule's loader
        as is, another whose caller keeps the first batch of every 10th epoch (as an
        image-logging callback would); throughput of the epochs after the first hold, and
        batches that did not arrive in a lent buffer (seen from the main process).
    profile: `benchmarks.stages` for the narrow and the float32 loader with 0 workers.

Results: a table per part and the targets on stdout (`benchmarks.collate_report`), and
``bench-results/collate.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.collate_data import SafetensorsViews, SeededLevels, SeededNoise
from benchmarks.collate_report import report, targets
from benchmarks.harness import REPO, median, ratio
from shardcache.datamodule import CachingDataModule

PARTS = ("float32", "narrow", "held", "profile")
HOLD_EVERY = 10
"""The held-batch run keeps the first batch of every this many epochs."""


# ---- loaders and epochs ----------------------------------------------------------------------


def datamodule(
    cache_dir: Path, items: int, loader: Any, *, narrow: bool, workers: int
) -> CachingDataModule:
    """A set-up disk-tier DataModule over ``items`` samples (built on first use)."""
    module = CachingDataModule(
        {"train": list(range(items))},
        loader,
        batch_size=32,
        parallel=workers if workers else -1,
        cache="disk",
        cache_dir=cache_dir,
        narrow=narrow,
    )
    module.prepare_data()
    module.setup("fit")
    return module


def epoch(loader: Any, each: Callable[[int, Any], None] | None = None) -> float:
    """Samples per second of one full epoch; ``each(number, batch)`` sees every batch."""
    served = 0
    started = time.perf_counter()
    for number, batch in enumerate(loader):
        served += len(batch[0])
        if each is not None:
            each(number, batch)
    return served / (time.perf_counter() - started)


def alternate(loaders: dict[str, Any], rounds: int) -> dict[str, list[float]]:
    """Samples/s of each loader's epochs, alternated, after a warm-up epoch of each."""
    for loader in loaders.values():
        epoch(loader)  # maps the shards, starts the workers, allocates the batch buffers
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    names = list(loaders)
    for number in range(rounds):
        shift = number % len(names)
        for name in names[shift:] + names[:shift]:
            rates[name].append(epoch(loaders[name]))
    return rates


def shard_paths(module: CachingDataModule) -> list[Path]:
    dataset = module.train_dataloader().dataset
    return [Path(dataset.path) / shard.file for shard in dataset.manifest.shards]  # type: ignore[attr-defined]


# ---- the parts -------------------------------------------------------------------------------


def float32_and_narrow(args: argparse.Namespace, parts: set[str]) -> dict[str, Any]:
    """Parts float32 and narrow: per worker count, the loaders alternated in one run."""
    source = SeededLevels(512)
    result: dict[str, Any] = {}
    for workers in (0, 2):
        modules = {
            narrow: datamodule(
                args.data_dir / ("narrow" if narrow else "float32"),
                args.items,
                source,
                narrow=narrow,
                workers=workers,
            )
            for narrow in (True, False)
        }
        loaders: dict[str, Any] = {"float32": modules[False].train_dataloader()}
        if "narrow" in parts:
            loaders["narrow"] = modules[True].train_dataloader()
        if "float32" in parts:
            loaders["stock"] = torch.utils.data.DataLoader(
                SafetensorsViews(shard_paths(modules[False])),
                batch_size=32,
                shuffle=True,
                num_workers=workers,
                persistent_workers=workers > 0,
            )
        rates = alternate(loaders, args.rounds)
        medians = {name: median(values) for name, values in rates.items()}
        result[f"w{workers}"] = {
            "samples_per_s": medians,
            "rounds": rates,
            "float32_vs_stock": ratio(medians["float32"], medians.get("stock")),
            "narrow_vs_float32": ratio(medians.get("narrow"), medians["float32"]),
        }
        if workers == 0 and "narrow" in parts:
            result["identical"] = identical_batches(modules[True], modules[False])
        del loaders, modules
    return result


def identical_batches(narrow: CachingDataModule, wide: CachingDataModule) -> bool:
    """Whether every unshuffled batch of the two DataModules is bit-identical."""
    pairs = zip(
        narrow.unshuffled_train_dataloader(), wide.unshuffled_train_dataloader(), strict=True
    )
    return all(
        torch.equal(a[0], b[0]) and torch.equal(a[1]["index"], b[1]["index"]) for a, b in pairs
    )


def _pooled(loader: Any, tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` lies in one of the buffers the collator lent (main process)."""
    address = tensor.untyped_storage().data_ptr()
    received = loader.collate_fn.pool._received.values()
    return any(buffer.storage.data_ptr() == address for buffer in received)


def held(args: argparse.Namespace) -> dict[str, Any]:
    """Part held: the same run with and without a batch kept every `HOLD_EVERY` epochs."""
    source = SeededNoise(256)
    modules = {
        name: datamodule(args.data_dir / "held", args.held_items, source, narrow=True, workers=2)
        for name in ("plain", "held")
    }
    loaders = {name: module.train_dataloader() for name, module in modules.items()}
    kept: list[Any] = []
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    fresh: dict[str, list[int]] = {name: [] for name in loaders}  # epochs of fresh batches
    for number in range(args.held_epochs):
        order = list(loaders) if number % 2 == 0 else list(loaders)[::-1]
        for name in order:

            def each(batch_number: int, batch: Any, name: str = name, number: int = number) -> None:
                if not _pooled(loaders[name], batch[0]):
                    fresh[name].append(number)
                if name == "held" and batch_number == 0 and number % HOLD_EVERY == 0:
                    kept.append(batch)

            rates[name].append(epoch(loaders[name], each))
    rest = {name: median(values[1:]) for name, values in rates.items()}  # after the 1st hold
    return {
        "samples_per_s": rest,
        "epochs": rates,
        "held_vs_plain": ratio(rest["held"], rest["plain"]),
        "hold_every": HOLD_EVERY,
        "batches_kept": len(kept),
        "fresh_batches_seen": {name: len(epochs) for name, epochs in fresh.items()},
        "fresh_batch_epochs": fresh,
    }


def profiles(args: argparse.Namespace) -> dict[str, Any]:
    """Part profile: the stage profile of the narrow and float32 loaders with 0 workers."""
    from benchmarks.stages import profile_loader

    source = SeededLevels(512)
    result = {}
    for name, narrow in (("narrow", True), ("float32", False)):
        module = datamodule(args.data_dir / name, args.items, source, narrow=narrow, workers=0)
        result[name] = profile_loader(module.train_dataloader(), max(args.rounds, 5))
        module.teardown("fit")
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--items", type=int, default=1000, help="1 MiB samples (default 1000)")
    parser.add_argument("--rounds", type=int, default=5, help="timed epochs per loader")
    parser.add_argument("--held-items", type=int, default=512)
    parser.add_argument("--held-epochs", type=int, default=40)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"of {', '.join(PARTS)}")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)"
    )
    parser.add_argument("--data-dir", type=Path, default=REPO / "bench-data" / "collate")
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench-results")
    args = parser.parse_args(argv)
    parts = {part.strip() for part in args.parts.split(",") if part.strip()}
    if not parts <= set(PARTS):
        parser.error(f"--parts: choose among {', '.join(PARTS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    shown = list(sys.argv[1:] if argv is None else argv)
    results: dict[str, Any] = {
        "command": shlex.join(["python", "-m", "benchmarks.collate", *shown]),
        "load_average_before": os.getloadavg(),
        "torch_threads": torch.get_num_threads(),
        "items": args.items,
        "rounds": args.rounds,
        "held_items": args.held_items,
        "held_epochs": args.held_epochs,
    }
    started = time.perf_counter()
    if parts & {"float32", "narrow"}:
        results["paths"] = float32_and_narrow(args, parts)
    if "held" in parts:
        results["held"] = held(args)
    if "profile" in parts:
        results["profile"] = profiles(args)
    results["load_average_after"] = os.getloadavg()
    results["wall_s"] = time.perf_counter() - started
    results["targets"] = [
        {"name": name, "value": value, "limit": limit, "pass": passed}
        for name, value, limit, passed in targets(results)
    ]
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "collate.json").write_text(json.dumps(results, indent=1) + "\n")
    print(report(results))
    print(
        f"load average {results['load_average_before'][0]:.1f} before, "
        f"{results['load_average_after'][0]:.1f} after; {results['wall_s']:.0f} s; "
        f"written: {args.results_dir / 'collate.json'}"
    )
    return results


if __name__ == "__main__":
    main()
