"""What `benchmarks.tiers` measures, in which order, each in a fresh process.

Every measurement is a task of `benchmarks.measure` run by the harness
(`benchmarks.harness.run_children`) in a new interpreter; its output goes to
``<results>/tiers-logs/NAME.log``. Per repeat and ``parallel`` setting: the disk tier's
build into an empty cache directory, one run per tier (the order rotates with the repeat,
so that drift spreads evenly), and the disk tier's time to first batch on the larger
split. Then, where needed, second runs of ``none`` and ``memory``, and two DDP ranks per
tier. The raw results are what `benchmarks.tiers_summary` turns into figures.
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

TIERS = ("none", "memory", "disk")
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


def published_bytes(cache_root: Path) -> int:
    """Bytes of the published caches under a cache directory (staging and locks excluded)."""
    from shardcache.store import CacheRoot

    return sum(harness.tree_bytes(path) for path in CacheRoot(cache_root).published())


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
        self.warm_root = work / "cache-warm"
        self.runs: list[dict[str, Any]] = []
        per_repeat = len(options.parallels) * 5  # build, none, memory, disk warm, disk SCALE x N
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

    def build(self, parallel: int, repeat: int) -> None:
        """Disk, first run: ``prepare_data`` into an empty cache directory."""
        tag = f"p{parallel}-r{repeat}"
        first_build = not self.warm_root.exists()
        cache_root = self.warm_root if first_build else self.work / f"cache-{tag}"
        spec = {
            **self.base,
            "tier": "disk",
            "parallel": parallel,
            "cache_dir": str(cache_root),
            "prepare": True,
            "epochs": 0,
            "decode_log": str(self.work / f"decodes-build-{tag}"),
        }
        label = f"disk   build          {self.where(parallel, repeat)}"
        if first_build:
            # Then, in the same process: the larger split's cache for the time-to-first-
            # batch comparison, and the physical references (memcpy, page cache, mmap).
            spec["then_prepare_variant"] = self.big
            spec["references"] = True
            label += f" (then the {self.big} cache, references)"
        (result,) = self.run([(f"disk-build-{tag}", spec)], label)
        result["cache_bytes"] = published_bytes(cache_root)
        if not first_build:
            shutil.rmtree(cache_root)  # frees its page cache too
        self.record("build", "disk", parallel, repeat, result)

    def tier_runs(self, parallel: int, repeat: int) -> None:
        """Each tier's run in a fresh process; the order rotates so drift spreads evenly."""
        tag = f"p{parallel}-r{repeat}"
        order = [*TIERS][repeat % 3 :] + [*TIERS][: repeat % 3]
        for tier in order:
            spec = {
                **self.base,
                "tier": tier,
                "parallel": parallel,
                "epochs": 1 + self.options.warm_epochs,
                "decode_log": str(self.work / f"decodes-{tier}-{tag}"),
            }
            if tier == "disk":
                spec["cache_dir"] = str(self.warm_root)
            kind = "warm run" if tier == "disk" else "run"
            label = f"{tier:<6} {kind:<14} {self.where(parallel, repeat)}"
            (result,) = self.run([(f"{tier}-{tag}", spec)], label)
            self.record("run", tier, parallel, repeat, result)

    def first_batch(self, parallel: int, repeat: int) -> None:
        """The disk tier's time to first batch on the larger split's warm cache."""
        tag = f"p{parallel}-r{repeat}"
        spec = {
            **self.base,
            "tier": "disk",
            "parallel": parallel,
            "cache_dir": str(self.warm_root),
            "variant": self.big,
            "first_batch_only": True,
            "decode_log": str(self.work / f"decodes-first-batch-{tag}"),
        }
        label = f"disk   first batch {self.big:<3} {self.where(parallel, repeat)}"
        (result,) = self.run([(f"disk-first-batch-{self.big}-{tag}", spec)], label)
        self.record("first_batch", "disk", parallel, repeat, result)

    def second_runs(self) -> None:
        """``none`` and ``memory`` in a second process, for their second-run decode count."""
        parallel = self.options.parallels[-1]
        for tier in ("none", "memory"):
            spec = {
                **self.base,
                "tier": tier,
                "parallel": parallel,
                "epochs": 1,
                "decode_log": str(self.work / f"decodes-{tier}-second"),
            }
            label = f"{tier:<6} second run     parallel={parallel:>2}"
            (result,) = self.run([(f"{tier}-second", spec)], label)
            self.record("second_run", tier, parallel, 1, result)

    def ddp(self, tier: str) -> list[Any]:
        """Two ranks of a gloo job on CPU, run together; their results."""
        ranks = []
        for rank in range(2):
            spec = {
                **self.base,
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
        return self.run(ranks, f"{tier:<6} DDP, 2 ranks (first run)")

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
            plan.build(parallel, repeat)
            plan.tier_runs(parallel, repeat)
            plan.first_batch(parallel, repeat)
    if options.extra_second_runs:
        plan.second_runs()
    ddp = {tier: plan.ddp(tier) for tier in ("memory", "disk")} if options.ddp else {}
    references = next(r["result"]["references"] for r in plan.runs if r["kind"] == "build")
    if not options.keep_caches:
        shutil.rmtree(work, ignore_errors=True)
    return {"runs": plan.runs, "ddp": ddp, "references": references}
