"""Compare shardcache's cache tiers: what each one costs and what it gains.

``python -m benchmarks.tiers --quick`` (``make bench``) takes a few minutes;
``python -m benchmarks.tiers`` (``make bench-full``) uses 2,000 images of 512x512.

Every measurement runs in a fresh interpreter (`benchmarks.measure`), repeated
``--repeats`` times with the tiers interleaved; figures are medians, ratios are taken
against the memory tier of the same run. The page cache stays warm between processes,
on purpose. Results: a table on stdout, and in ``--results-dir``: ``summary.json``,
``report.md`` and ``tiers.png``.

Measured processes use one torch intra-op thread (``--threads 1``), as DataLoader
workers do: with torch's default of one per core, any other load on the machine makes
every small parallel op (uint8 to float, division, ``stack``) wait for a descheduled
thread, and in-process loading ran 10x to 25x slower here with a load average of 2-5.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.synthetic import SyntheticDataset, SyntheticParams, ensure_dataset

REPO = Path(__file__).resolve().parents[1]
TIERS = ("none", "memory", "disk")
MB = 1 << 20
CHILD_TIMEOUT_S = 3600
FLAT_FIRST_BATCH = 1.5
"""Time to first batch counts as flat when 4N takes at most this many times N's."""

QUICK = {"items": 400, "size": 256, "warm_epochs": 2}
FULL = {"items": 2000, "size": 512, "warm_epochs": 2}


@dataclass(frozen=True)
class Options:
    """The benchmark's settings (see ``--help``)."""

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


def parse_options(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.tiers", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"small data set ({QUICK['items']} images of {QUICK['size']}x{QUICK['size']})",
    )
    parser.add_argument("--items", type=int, help="train images, N (default 2000; quick 400)")
    parser.add_argument("--size", type=int, help="image height and width (default 512; quick 256)")
    parser.add_argument("--mode", choices=["gray", "rgb"], default="gray")
    parser.add_argument("--format", dest="image_format", choices=["png", "jpeg"], default="png")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per figure")
    parser.add_argument(
        "--parallel",
        default="-1,2",
        help="comma-separated `parallel` settings; the last one fills the summary (default -1,2)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warm-epochs", type=int, help="timed epochs after the first")
    parser.add_argument("--scale", type=int, default=4, help="the larger split is SCALE x N items")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads in every measured process, as DataLoader workers use; "
        "0: torch's choice, which on a busy machine slows in-process loading 10x or more "
        "(default 1)",
    )
    parser.add_argument("--no-ddp", dest="ddp", action="store_false", help="skip the DDP runs")
    parser.add_argument("--keep-caches", action="store_true", help="keep the disk caches built")
    parser.add_argument("--data-dir", type=Path, default=REPO / "bench-data")
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench-results")
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    parallels = tuple(int(value) for value in args.parallel.split(",") if value.strip())
    if not parallels or args.repeats < 1 or args.scale < 2:
        parser.error("need at least one --parallel value, --repeats >= 1 and --scale >= 2")
    return Options(
        quick=args.quick,
        items=args.items or preset["items"],
        size=args.size or preset["size"],
        mode=args.mode,
        image_format=args.image_format,
        repeats=args.repeats,
        parallels=parallels,
        batch_size=args.batch_size,
        warm_epochs=args.warm_epochs or preset["warm_epochs"],
        scale=args.scale,
        threads=args.threads or None,
        ddp=args.ddp,
        keep_caches=args.keep_caches,
        data_dir=args.data_dir.resolve(),
        results_dir=args.results_dir.resolve(),
    )


# ---- running measurements in fresh processes -------------------------------------------------


class Runner:
    """Runs `benchmarks.measure` tasks in fresh interpreters and keeps their logs."""

    def __init__(self, work: Path, logs: Path, total: int) -> None:
        self.work = work
        self.logs = logs
        self.total = total
        self.done = 0
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
        )

    def _command(self, name: str, spec: dict[str, Any]) -> tuple[list[str], Path, Path]:
        spec_path = self.work / "specs" / f"{name}.json"
        spec_path.parent.mkdir(parents=True, exist_ok=True)
        spec_path.write_text(json.dumps(spec, indent=1))
        out = self.work / "out" / f"{name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "benchmarks.measure", str(spec_path), str(out)]
        return command, out, self.logs / f"{name}.log"

    def _result(self, name: str, process: subprocess.Popen[bytes], out: Path, log: Path) -> Any:
        try:
            code = process.wait(timeout=CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        if code != 0:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"measurement {name} failed (exit {code}); {log}:\n{tail}")
        return json.loads(out.read_text())

    def run(self, name: str, spec: dict[str, Any], label: str) -> dict[str, Any]:
        """Run one measurement and return its result."""
        return self.run_group([(name, spec)], label)[0]

    def run_group(self, group: list[tuple[str, dict[str, Any]]], label: str) -> list[Any]:
        """Run measurements at the same time (the ranks of a DDP job) and return their results."""
        self.done += 1
        print(f"[{self.done:>2}/{self.total}] {label} ...", end="", flush=True)
        started = time.perf_counter()
        self.logs.mkdir(parents=True, exist_ok=True)
        running = []
        for name, spec in group:
            command, out, log = self._command(name, spec)
            with log.open("wb") as stream:
                process = subprocess.Popen(
                    command, cwd=REPO, env=self.env, stdout=stream, stderr=subprocess.STDOUT
                )
            running.append((name, process, out, log))
        try:
            results = [self._result(*entry) for entry in running]
        finally:
            for _, process, _, _ in running:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        print(f" {time.perf_counter() - started:.1f} s", flush=True)
        return results


def directory_bytes(path: Path) -> int:
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


def published_bytes(cache_root: Path) -> int:
    """Bytes of the published caches under a cache directory (staging and locks excluded)."""
    from shardcache.store import CacheRoot

    return sum(directory_bytes(path) for path in CacheRoot(cache_root).published())


# ---- the plan -------------------------------------------------------------------------------


def measure(options: Options, dataset: SyntheticDataset) -> dict[str, Any]:
    """Run every measurement; return the raw results."""
    work = options.data_dir / "tiers-work"  # scratch: disk caches, specs, decode logs
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    logs = options.results_dir / "tiers-logs"  # each measured process's output
    shutil.rmtree(logs, ignore_errors=True)
    per_repeat = len(options.parallels) * 5  # build, none, memory, disk warm, disk SCALE x N
    extra_second_runs = 2 if options.repeats * len(options.parallels) == 1 else 0
    total = options.repeats * per_repeat + extra_second_runs + 2 * options.ddp
    runner = Runner(work, logs, total)
    base = {
        "task": "run",
        "split_path": str(dataset.split_path),
        "data_root": str(dataset.root),
        "mode": options.mode,
        "batch_size": options.batch_size,
        "seed": 0,
        "threads": options.threads,
    }
    big = f"{options.scale}N"
    warm_root = work / "cache-warm"
    runs: list[dict[str, Any]] = []

    def record(kind: str, tier: str, parallel: int, repeat: int, result: dict[str, Any]) -> None:
        runs.append(
            {"kind": kind, "tier": tier, "parallel": parallel, "repeat": repeat, "result": result}
        )

    for repeat in range(options.repeats):
        for parallel in options.parallels:
            tag = f"p{parallel}-r{repeat}"
            where = f"parallel={parallel:>2} repeat {repeat + 1}/{options.repeats}"
            # Disk, first run: build into an empty cache directory.
            first_build = not warm_root.exists()
            cache_root = warm_root if first_build else work / f"cache-{tag}"
            spec = {
                **base,
                "tier": "disk",
                "parallel": parallel,
                "cache_dir": str(cache_root),
                "prepare": True,
                "epochs": 0,
                "decode_log": str(work / f"decodes-build-{tag}"),
            }
            if first_build:
                # Then, in the same process: the larger split's cache for the time-to-first-
                # batch comparison, and the physical references (memcpy, page cache, mmap).
                spec["then_prepare_variant"] = big
                spec["references"] = True
            label = f"disk   build          {where}"
            if first_build:
                label += f" (then the {big} cache, references)"
            result = runner.run(f"disk-build-{tag}", spec, label)
            result["cache_bytes"] = published_bytes(cache_root)
            if not first_build:
                shutil.rmtree(cache_root)  # frees its page cache too
            record("build", "disk", parallel, repeat, result)
            # Each tier's run in a fresh process; rotate the order so drift spreads evenly.
            order = [*TIERS][repeat % 3 :] + [*TIERS][: repeat % 3]
            for tier in order:
                spec = {
                    **base,
                    "tier": tier,
                    "parallel": parallel,
                    "epochs": 1 + options.warm_epochs,
                    "decode_log": str(work / f"decodes-{tier}-{tag}"),
                }
                if tier == "disk":
                    spec["cache_dir"] = str(warm_root)
                label = f"{tier:<6} {'warm run' if tier == 'disk' else 'run':<14} {where}"
                record("run", tier, parallel, repeat, runner.run(f"{tier}-{tag}", spec, label))
            spec = {
                **base,
                "tier": "disk",
                "parallel": parallel,
                "cache_dir": str(warm_root),
                "variant": big,
                "first_batch_only": True,
                "decode_log": str(work / f"decodes-first-batch-{tag}"),
            }
            label = f"disk   first batch {big:<3} {where}"
            result = runner.run(f"disk-first-batch-{big}-{tag}", spec, label)
            record("first_batch", "disk", parallel, repeat, result)

    if extra_second_runs:  # none and memory need a second process for their second-run count
        parallel = options.parallels[-1]
        for tier in ("none", "memory"):
            spec = {
                **base,
                "tier": tier,
                "parallel": parallel,
                "epochs": 1,
                "decode_log": str(work / f"decodes-{tier}-second"),
            }
            label = f"{tier:<6} second run     parallel={parallel:>2}"
            record("second_run", tier, parallel, 1, runner.run(f"{tier}-second", spec, label))

    ddp: dict[str, Any] = {}
    if options.ddp:
        for tier in ("memory", "disk"):
            ranks = []
            for rank in range(2):
                spec = {
                    **base,
                    "task": "ddp",
                    "tier": tier,
                    "parallel": -1,
                    "rank": rank,
                    "world_size": 2,
                    "init_file": str(work / f"ddp-{tier}.init"),
                    "cache_dir": str(work / "cache-ddp"),
                    "decode_log": str(work / f"decodes-ddp-{tier}"),
                }
                ranks.append((f"ddp-{tier}-rank{rank}", spec))
            ddp[tier] = runner.run_group(ranks, f"{tier:<6} DDP, 2 ranks (first run)")

    references = next(r["result"]["references"] for r in runs if r["kind"] == "build")
    if not options.keep_caches:
        shutil.rmtree(work, ignore_errors=True)
    return {"runs": runs, "ddp": ddp, "references": references}


# ---- figures --------------------------------------------------------------------------------


def median(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return value / reference


def tier_figures(options: Options, runs: list[dict[str, Any]], tier: str, parallel: int) -> Any:
    """Medians of one tier at one ``parallel`` setting."""
    mine = [r["result"] for r in runs if r["tier"] == tier and r["parallel"] == parallel]
    served = [r for r in mine if "epoch_s" in r and "memory" in r]
    builds = [r for r in mine if "prepare_s" in r]
    n = options.items
    if tier == "none":
        build = [r["setup_s"] + r["epoch_s"][0] for r in served]
    elif tier == "memory":
        build = [r["setup_s"] for r in served]
    else:
        build = [r["prepare_s"] for r in builds]
    warm = [n / statistics.median(r["epoch_s"][1:]) for r in served if len(r["epoch_s"]) > 1]
    totals = [r["memory"]["total"] for r in served]
    figures: dict[str, Any] = {
        "build_s": median(build),
        "warm_samples_per_s": median(warm),
        "first_epoch_samples_per_s": median([n / r["epoch_s"][0] for r in served]),
        "first_batch_s": median([r["first_batch_s"] for r in served]),
        "rss_mb": median([t["rss_mb"] for t in totals]),
        "pss_mb": median([t["pss_mb"] for t in totals]),
        "uss_mb": median([t["uss_mb"] for t in totals]),
        "cache_pss_mb": median([t.get("cache_pss_mb") for t in totals]),
        "main_rss_mb": median([r["memory"]["processes"]["main"]["rss_mb"] for r in served]),
        "baseline_pss_mb": median([r["baseline"]["pss_mb"] for r in served]),
        "processes": max((len(r["memory"]["processes"]) for r in served), default=0),
        "samples_build": build,
        "samples_warm": warm,
    }
    if tier == "disk":
        figures["cache_bytes"] = builds[0]["cache_bytes"] if builds else None
        figures[f"first_batch_{options.scale}N_s"] = median(
            [r["first_batch_s"] for r in mine if r.get("items") == options.scale * n]
        )
    return figures


def decode_counts(runs: list[dict[str, Any]], tier: str) -> tuple[int | None, int | None]:
    """Decodes of the tier's first run and of the next fresh process (its second run)."""
    if tier == "disk":
        builds = [r["result"] for r in runs if r["kind"] == "build"]
        warm = [r["result"] for r in runs if r["kind"] == "run" and r["tier"] == "disk"]
        return builds[0]["decodes_prepare"], warm[0]["decodes_first_epoch"]
    served = [r["result"] for r in runs if r["tier"] == tier and r["kind"] in {"run", "second_run"}]
    counts = [r["decodes_first_epoch"] for r in served]
    return counts[0], counts[1] if len(counts) > 1 else None


def ddp_figures(ranks: list[dict[str, Any]], data_bytes: int) -> dict[str, Any]:
    pss = sum(rank["memory"]["pss_mb"] for rank in ranks)
    baseline = sum(rank["baseline"]["pss_mb"] for rank in ranks)
    return {
        "ranks": ranks,
        "rss_sum_mb": sum(rank["memory"]["rss_mb"] for rank in ranks),
        "pss_sum_mb": pss,
        "uss_sum_mb": sum(rank["memory"]["uss_mb"] for rank in ranks),
        "baseline_pss_sum_mb": baseline,
        "cache_pss_sum_mb": sum(rank["memory"].get("cache_pss_mb", 0.0) for rank in ranks),
        "data_copies": (pss - baseline) * MB / data_bytes,
        "cache_copies": sum(rank["memory"].get("cache_pss_mb", 0.0) for rank in ranks)
        * MB
        / data_bytes,
        "decodes_total": ranks[0]["decodes_total"],
        "seconds": max(rank["epoch_s"] for rank in ranks),
    }


def machine_info() -> dict[str, Any]:
    import lightning
    import psutil
    import torch
    import torchvision

    import shardcache

    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / (1 << 30), 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torchvision": torchvision.__version__,
        "lightning": lightning.__version__,
        "shardcache": shardcache.__version__,
    }


def summarise(
    options: Options, dataset: SyntheticDataset, raw: dict[str, Any], extra: dict[str, Any]
) -> dict[str, Any]:
    """The summary.json document (see the module docstring of `benchmarks.report`)."""
    runs = raw["runs"]
    n = options.items
    sample_bytes = next(r["result"]["sample_bytes"] for r in runs if r["kind"] == "run")
    data_bytes = n * sample_bytes
    by_parallel: dict[str, Any] = {}
    for parallel in options.parallels:
        tiers = {tier: tier_figures(options, runs, tier, parallel) for tier in TIERS}
        for figures in tiers.values():
            pss, base = figures["pss_mb"], figures["baseline_pss_mb"]
            figures["data_copies"] = (
                None if pss is None or base is None else (pss - base) * MB / data_bytes
            )
        memory = tiers["memory"]
        ratios = {
            tier: {
                key: ratio(tiers[tier][key], memory[key])
                for key in ("build_s", "warm_samples_per_s", "first_batch_s", "pss_mb")
            }
            for tier in ("none", "disk")
        }
        disk = tiers["disk"]
        first_batch = {
            "N": disk["first_batch_s"],
            f"{options.scale}N": disk[f"first_batch_{options.scale}N_s"],
        }
        first_batch["ratio"] = ratio(first_batch[f"{options.scale}N"], first_batch["N"])
        by_parallel[str(parallel)] = {
            "num_workers": max(parallel, 0),
            "tiers": tiers,
            "ratios": ratios,
            "first_batch": first_batch,
        }
    head = by_parallel[str(options.headline_parallel)]
    summary_tiers = {}
    for tier in TIERS:
        figures = head["tiers"][tier]
        first, second = decode_counts(runs, tier)
        summary_tiers[tier] = {
            "build_s": figures["build_s"],
            "warm_samples_per_s": figures["warm_samples_per_s"],
            "first_batch_s": figures["first_batch_s"],
            "decodes_first_run": first,
            "decodes_second_run": second,
            "rss_mb": figures["rss_mb"],
            "pss_mb": figures["pss_mb"],
            "cache_bytes": figures.get("cache_bytes") or 0,
        }
    ddp = {tier: ddp_figures(ranks, data_bytes) for tier, ranks in raw["ddp"].items()}
    references = raw["references"]
    summary = {
        "tiers": summary_tiers,
        "ratios": head["ratios"],
        "machine": {**machine_info(), **extra["machine"]},
        "params": {
            "command": extra["command"],
            "quick": options.quick,
            "items": n,
            "size": options.size,
            "mode": options.mode,
            "image_format": options.image_format,
            "repeats": options.repeats,
            "parallels": list(options.parallels),
            "headline_parallel": options.headline_parallel,
            "batch_size": options.batch_size,
            "warm_epochs": options.warm_epochs,
            "scale": options.scale,
            "threads": options.threads,
            "sample_bytes": sample_bytes,
            "decoded_bytes": data_bytes,
            "dataset": {"root": str(dataset.root), **dataset.info},
            "wall_s": extra["wall_s"],
        },
        "by_parallel": by_parallel,
        "ddp": ddp,
        "references": references,
        "runs": runs,
    }
    summary["targets"] = targets(summary)
    return summary


def targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The design's performance targets, each a pass/miss line (the worst ``parallel`` counts)."""
    by_parallel = summary["by_parallel"].values()
    lines = []

    def line(name: str, value: float | None, limit: float, at_most: bool, unit: str) -> None:
        passed = None if value is None else (value <= limit if at_most else value >= limit)
        lines.append(
            {
                "name": name,
                "value": value,
                "limit": limit,
                "compare": "<=" if at_most else ">=",
                "unit": unit,
                "pass": passed,
            }
        )

    def worst(values: list[float | None], at_most: bool) -> float | None:
        present = [value for value in values if value is not None]
        if not present:
            return None
        return max(present) if at_most else min(present)

    warm = [p["ratios"]["disk"]["warm_samples_per_s"] for p in by_parallel]
    line("disk warm throughput vs memory", worst(warm, False), 0.9, False, "x")
    build = [p["ratios"]["disk"]["build_s"] for p in by_parallel]
    line("disk build time vs memory load", worst(build, True), 1.1, True, "x")
    scale = summary["params"]["scale"]
    flat = [p["first_batch"]["ratio"] for p in by_parallel]
    line(
        f"time to first batch, {scale}N vs N (flat)", worst(flat, True), FLAT_FIRST_BATCH, True, "x"
    )
    if "disk" in summary["ddp"]:
        # The PSS of the shard mappings summed over ranks: the page-cache pages the job
        # holds, without each rank's own allocations (shown in the DDP table).
        copies = summary["ddp"]["disk"]["cache_copies"]
        line(
            "DDP 2 ranks, disk tier shard pages resident (sum of PSS)", copies, 1.1, True, "copies"
        )
        decodes = summary["ddp"]["disk"]["decodes_total"]
        items = summary["params"]["items"]
        line("DDP 2 ranks, disk tier decodes per item", decodes / items, 1.0, True, "per item")
    references = summary["references"]
    bandwidth = ratio(references["page_cache_read_gb_s"], references["memcpy_gb_s"])
    line("page-cache read bandwidth vs memcpy", bandwidth, 0.5, False, "x")
    overhead = references["getitem_us"] - references["bare_view_us"]
    line("disk __getitem__ overhead over a bare mmap view", overhead, 5.0, True, "us")
    return lines


# ---- main -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from benchmarks import report

    options = parse_options(argv)
    command = "python -m benchmarks.tiers " + " ".join(sys.argv[1:] if argv is None else list(argv))
    started = time.perf_counter()
    load_before = os.getloadavg()
    params = SyntheticParams(
        count=options.items,
        size=options.size,
        mode=options.mode,  # type: ignore[arg-type]
        image_format=options.image_format,  # type: ignore[arg-type]
    )
    print(f"data: {options.items} + validation images of {options.size}x{options.size} ...")
    dataset = ensure_dataset(params, options.data_dir)
    print(f"data: {dataset.root} ({json.dumps(dataset.info)})")
    raw = measure(options, dataset)
    extra = {
        "command": command.strip(),
        "wall_s": time.perf_counter() - started,
        "machine": {"load_average_before": load_before, "load_average_after": os.getloadavg()},
    }
    summary = summarise(options, dataset, raw, extra)
    options.results_dir.mkdir(parents=True, exist_ok=True)
    (options.results_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    text = report.markdown(summary)
    (options.results_dir / "report.md").write_text(text)
    report.plot(summary, options.results_dir / "tiers.png")
    print()
    print(text)
    print(f"written: {options.results_dir}/summary.json, report.md, tiers.png")
    return summary


if __name__ == "__main__":
    main()
