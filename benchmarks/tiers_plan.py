"""What `benchmarks.tiers` measures, in which order, each in a fresh process.

Every measurement is a task of `benchmarks.measure` run by the harness
(`benchmarks.harness.run_children`) in a new interpreter; its output goes to
``<results>/tiers-logs/NAME.log``. Per repeat and ``parallel`` setting: each disk tier's
build into an empty cache directory (``disk`` stores exact 8/16-bit data narrow,
``disk-float32`` stores floats as loaded, in a cache directory of its own), followed in the
same process by cold epochs (`benchmarks.cold`); one run per tier (the order rotates with
the repeat, so that drift spreads evenly; the first repeat's runs end with a digest of the
samples served); and the disk tier's time to first batch on the larger split. Then, where
needed, second runs of ``none`` and ``memory``, and two DDP ranks per tier. The raw
results are what `benchmarks.tiers_summary` turns into figures.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks import harness

if TYPE_CHECKING:
    from benchmarks.synthetic import SyntheticDataset

TIERS = ("none", "memory", "disk", "disk-float32")
DISK_TIERS = ("disk", "disk-float32")
TIER_OPTIONS: dict[str, dict[str, Any]] = {
    "none": {"cache": "none"},
    "memory": {"cache": "memory"},
    "disk": {"cache": "disk", "narrow": True},
    "disk-float32": {"cache": "disk", "narrow": False},
}
"""What each tier row is: the DataModule's ``cache`` and, for the disk tier, ``narrow``."""
LABELS = {"disk": "disk (narrow)", "disk-float32": "disk (float32)"}
CHILD = "benchmarks.measure"
CHILD_TIMEOUT_S = 3600
"""Seconds one measurement (or the two ranks of a DDP job) may take before it is killed."""


@dataclass(frozen=True)
class Options:
    """The benchmark's settings (see ``python -m benchmarks.tiers --help``)."""

    quick: bool
    items: int
    size: int
    mode: str
    image_format: str
    repeats: int
    parallels: tuple[int, ...]
    batch_size: int
    warm_epochs: int
    scale: int
    cold_epochs: int
    threads: int | None
    ddp: bool
    keep_caches: bool
    data_dir: Path
    results_dir: Path

    @property
    def headline_parallel(self) -> int:
        """The ``parallel`` setting whose figures fill the per-tier summary."""
        return self.parallels[-1]

    @property
    def extra_second_runs(self) -> bool:
        """Whether ``none`` and ``memory`` need a process of their own for a second-run count."""
        return self.repeats * len(self.parallels) == 1


def published_cache(cache_root: Path, items: int) -> dict[str, Any]:
    """Bytes on disk and the manifest's ``storage`` of the N split's published cache.

    (The first build's cache directory also holds the larger split's cache.)
    """
    from shardcache.store import CacheRoot, Manifest

    for path in CacheRoot(cache_root).published():
        manifest = Manifest.read(path / "manifest.json")
        if manifest.num_samples == items:
            return {"cache_bytes": harness.tree_bytes(path), "storage": manifest.storage}
    raise RuntimeError(f"no published cache of {items} samples in {cache_root}")


class Plan:
    """The measurements of one run, and the raw results they gave, in order."""

    def __init__(self, options: Options, dataset: SyntheticDataset, work: Path) -> None:
        self.options = options
        self.work = work  # scratch: disk caches, specs and results, decode logs
        self.logs = options.results_dir / "tiers-logs"  # each measured process's output
        self.base = {
            "task": "run",
            "split_path": str(dataset.split_path),
            "data_root": str(dataset.root),
            "mode": options.mode,
            "batch_size": options.batch_size,
            "seed": 0,
            "torch_threads": options.threads,
        }
        self.big = f"{options.scale}N"
        self.warm_roots = {tier: work / f"cache-warm-{tier}" for tier in DISK_TIERS}
        self.runs: list[dict[str, Any]] = []
        # Per parallel: two builds, a run per tier, the disk tier's SCALE x N first batch.
        per_repeat = len(options.parallels) * (len(DISK_TIERS) + len(TIERS) + 1)
        second_runs = 2 if options.extra_second_runs else 0
        self.total = options.repeats * per_repeat + second_runs + 2 * options.ddp
        self.done = 0
        self.env = harness.child_env()

    def run(self, specs: Sequence[tuple[str, dict[str, Any]]], label: str) -> list[Any]:
        """Run measurements together (one, or the ranks of a DDP job); return their results."""
        self.done += 1
        print(f"[{self.done:>2}/{self.total}] {label} ...", end="", flush=True)
        started = time.perf_counter()
        runs = harness.run_children(
            CHILD,
            specs,
            timeout=CHILD_TIMEOUT_S,
            env=self.env,
            scratch=self.work / "children",
            logs=self.logs,
        )
        results = [run.expect() for run in runs]
        print(f" {time.perf_counter() - started:.1f} s", flush=True)
        return results

    def record(self, kind: str, tier: str, parallel: int, repeat: int, result: Any) -> None:
        self.runs.append(
            {"kind": kind, "tier": tier, "parallel": parallel, "repeat": repeat, "result": result}
        )

    def builds(self, parallel: int, repeat: int) -> None:
        """Both disk tiers' builds, in an order that alternates with the repeat."""
        order = DISK_TIERS if repeat % 2 == 0 else DISK_TIERS[::-1]
        for tier in order:
            self.build(tier, parallel, repeat)

    def build(self, tier: str, parallel: int, repeat: int) -> None:
        """A disk tier's first run: ``prepare_data`` into an empty cache directory, then
        cold epochs in the same process."""
        tag = f"{tier}-p{parallel}-r{repeat}"
        first_build = not self.warm_roots[tier].exists()
        cache_root = self.warm_roots[tier] if first_build else self.work / f"cache-{tag}"
        spec = {
            **self.base,
            **TIER_OPTIONS[tier],
            "tier": tier,
            "parallel": parallel,
            "cache_dir": str(cache_root),
            "prepare": True,
            "epochs": 0,
            "cold_epochs": self.options.cold_epochs,
            "decode_log": str(self.work / f"decodes-build-{tag}"),
        }
        label = f"{tier:<12} build + cold     {self.where(parallel, repeat)}"
        if first_build and tier == "disk":
            # Then, in the same process: the larger split's cache for the time-to-first-
            # batch comparison.
            spec["then_prepare_variant"] = self.big
            label += f" (then the {self.big} cache)"
        if first_build and tier == "disk-float32":
            # The physical references (memcpy, page cache, mmap) on the cache whose
            # samples are views of the mapping, as `CacheDataset[i]` serves them.
            spec["references"] = True
            label += " (then references)"
        (result,) = self.run([(f"build-{tag}", spec)], label)
        result.update(published_cache(cache_root, self.options.items))
        if not first_build:
            shutil.rmtree(cache_root)  # frees its page cache too
        self.record("build", tier, parallel, repeat, result)

    def tier_runs(self, parallel: int, repeat: int) -> None:
        """Each tier's run in a fresh process; the order rotates so drift spreads evenly."""
        tag = f"p{parallel}-r{repeat}"
        shift = repeat % len(TIERS)
        order = [*TIERS[shift:], *TIERS[:shift]]
        for tier in order:
            spec = {
                **self.base,
                **TIER_OPTIONS[tier],
                "tier": tier,
                "parallel": parallel,
                "epochs": 1 + self.options.warm_epochs,
                "decode_log": str(self.work / f"decodes-{tier}-{tag}"),
                "digest": repeat == 0,  # one digest per tier and parallel setting
            }
            if tier in DISK_TIERS:
                spec["cache_dir"] = str(self.warm_roots[tier])
            kind = "warm run" if tier in DISK_TIERS else "run"
            label = f"{tier:<12} {kind:<15} {self.where(parallel, repeat)}"
            (result,) = self.run([(f"{tier}-{tag}", spec)], label)
            self.record("run", tier, parallel, repeat, result)

    def first_batch(self, parallel: int, repeat: int) -> None:
        """The disk tier's time to first batch on the larger split's warm cache."""
        tag = f"p{parallel}-r{repeat}"
        spec = {
            **self.base,
            **TIER_OPTIONS["disk"],
            "tier": "disk",
            "parallel": parallel,
            "cache_dir": str(self.warm_roots["disk"]),
            "variant": self.big,
            "first_batch_only": True,
            "decode_log": str(self.work / f"decodes-first-batch-{tag}"),
        }
        label = f"{'disk':<12} first batch {self.big:<3} {self.where(parallel, repeat)}"
        (result,) = self.run([(f"disk-first-batch-{self.big}-{tag}", spec)], label)
        self.record("first_batch", "disk", parallel, repeat, result)

    def second_runs(self) -> None:
        """``none`` and ``memory`` in a second process, for their second-run decode count."""
        parallel = self.options.parallels[-1]
        for tier in ("none", "memory"):
            spec = {
                **self.base,
                **TIER_OPTIONS[tier],
                "tier": tier,
                "parallel": parallel,
                "epochs": 1,
                "decode_log": str(self.work / f"decodes-{tier}-second"),
            }
            label = f"{tier:<12} second run      parallel={parallel:>2}"
            (result,) = self.run([(f"{tier}-second", spec)], label)
            self.record("second_run", tier, parallel, 1, result)

    def ddp(self, tier: str) -> list[Any]:
        """Two ranks of a gloo job on CPU, run together; their results."""
        ranks = []
        for rank in range(2):
            spec = {
                **self.base,
                **TIER_OPTIONS[tier],
                "task": "ddp",
                "tier": tier,
                "parallel": -1,
                "rank": rank,
                "world_size": 2,
                "init_file": str(self.work / f"ddp-{tier}.init"),
                "cache_dir": str(self.work / "cache-ddp"),
                "decode_log": str(self.work / f"decodes-ddp-{tier}"),
            }
            ranks.append((f"ddp-{tier}-rank{rank}", spec))
        return self.run(ranks, f"{tier:<12} DDP, 2 ranks (first run)")

    def where(self, parallel: int, repeat: int) -> str:
        return f"parallel={parallel:>2} repeat {repeat + 1}/{self.options.repeats}"


def measure(options: Options, dataset: SyntheticDataset) -> dict[str, Any]:
    """Run every measurement; return the raw results."""
    work = options.data_dir / "tiers-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.rmtree(options.results_dir / "tiers-logs", ignore_errors=True)
    plan = Plan(options, dataset, work)
    for repeat in range(options.repeats):
        for parallel in options.parallels:
            plan.builds(parallel, repeat)
            plan.tier_runs(parallel, repeat)
            plan.first_batch(parallel, repeat)
    if options.extra_second_runs:
        plan.second_runs()
    ddp = {tier: plan.ddp(tier) for tier in ("memory", "disk")} if options.ddp else {}
    references = next(r["result"]["references"] for r in plan.runs if "references" in r["result"])
    if not options.keep_caches:
        shutil.rmtree(work, ignore_errors=True)
    return {"runs": plan.runs, "ddp": ddp, "references": references}
