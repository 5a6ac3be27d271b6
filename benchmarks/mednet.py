"""mednet's own memory cache against shardcache.mednet's disk tier, on the same workload.

``python -m benchmarks.mednet --quick`` (run by ``make bench`` after the tiers): the
synthetic 8-bit PNGs of `benchmarks.synthetic`, read by a mednet ``RawDataLoader`` (PIL,
``to_dtype(scale=True)``, ``tv_tensors.Image``: what mednet's database loaders do), served by

- mednet 2.1's own ``CachingDataModule`` with ``cache_samples=True`` (its memory cache:
  every run and every rank decodes the split at ``setup``);
- ``shardcache.mednet.CachingDataModule(cache="disk")`` (decoded once, ever).

Each figure comes from fresh processes (`benchmarks.harness`), medians of ``--repeats``:
time to the first training batch and to the end of the first epoch of a second run (the
disk cache already built, mednet's cache rebuilt, as every run does), the same first
epoch of a cold second run (what the run reads, mednet's PNGs or shardcache's shards,
dropped from the page cache first: the disk tier's read-ahead at work), warm samples/s
through ``train_dataloader()`` (the median of 5 epochs per process), decodes per run, and
the decodes and proportional memory (PSS) of the two ranks of a gloo job's first run,
holding the split at once. Results:
``<results>/mednet.json`` and ``mednet.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.synthetic import SyntheticParams, ensure_dataset

CHILD = "benchmarks._mednet_child"
SYSTEMS = ("mednet", "shardcache")
TIMEOUT_S = 1800


def _spec(system: str, dataset: Any, work: Path, **extra: Any) -> dict[str, Any]:
    return {
        "task": "run",
        "system": system,
        "split_path": str(dataset.split_path),
        "data_root": str(dataset.root),
        "cache_dir": str(work / "cache"),
        "batch_size": 32,
        "torch_threads": 1,
        **extra,
    }


def _run(name: str, spec: dict[str, Any], work: Path, logs: Path) -> Any:
    run = harness.run_child(
        CHILD, spec, timeout=TIMEOUT_S, name=name, env=harness.child_env(), scratch=work, logs=logs
    )
    return run.expect()


def _ranks(system: str, dataset: Any, work: Path, logs: Path) -> list[Any]:
    specs = [
        (
            f"{system}-rank{rank}",
            _spec(
                system,
                dataset,
                work,
                task="ranks",
                rank=rank,
                world_size=2,
                init_file=str(work / f"{system}.init"),
                cache_dir=str(work / "cache-ranks"),  # a first run: nothing cached yet
            ),
        )
        for rank in range(2)
    ]
    runs = harness.run_children(
        CHILD, specs, timeout=TIMEOUT_S, env=harness.child_env(), scratch=work, logs=logs
    )
    return [run.expect() for run in runs]


def measure(dataset: Any, repeats: int, work: Path, logs: Path) -> dict[str, Any]:
    """Every run, in fresh processes: per system, a first run, then ``repeats`` second runs."""
    raw: dict[str, Any] = {system: {"first": None, "second": [], "cold": []} for system in SYSTEMS}
    for system in SYSTEMS:
        print(f"{system:<10} first run ...", flush=True)
        raw[system]["first"] = _run(f"{system}-first", _spec(system, dataset, work), work, logs)
    for repeat in range(repeats):
        for system in SYSTEMS if repeat % 2 == 0 else reversed(SYSTEMS):
            for kind in ("second", "cold"):
                print(f"{system:<10} {kind} run {repeat + 1}/{repeats} ...", flush=True)
                spec = _spec(system, dataset, work, cold=kind == "cold")
                raw[system][kind].append(_run(f"{system}-{kind}-{repeat}", spec, work, logs))
    for system in SYSTEMS:
        print(f"{system:<10} 2 ranks ...", flush=True)
        raw[system]["ranks"] = _ranks(system, dataset, work, logs)
    return raw


def summarise(raw: dict[str, Any]) -> dict[str, Any]:
    """Medians per system, and shardcache's ratios to mednet's."""
    rows: dict[str, dict[str, Any]] = {}
    for system, runs in raw.items():
        second, cold = runs["second"], runs["cold"]
        rows[system] = {
            "first_run_decodes": runs["first"]["decodes"],
            "second_run_decodes": harness.median(run["decodes"] for run in second),
            "first_batch_s": harness.median(run["first_batch_s"] for run in second),
            "first_epoch_s": harness.median(run["first_epoch_s"] for run in second),
            "cold_first_epoch_s": harness.median(run["first_epoch_s"] for run in cold),
            "cold_resident_after_drop": max(run["resident_after_drop"] for run in cold),
            "warm_samples_per_s": harness.median(run["warm_samples_per_s"] for run in second),
            "ranks_pss_mb": sum(rank["pss_mb"] for rank in runs["ranks"]),
            "ranks_decodes": sum(rank["decodes"] for rank in runs["ranks"]),
        }
    ours, theirs = rows["shardcache"], rows["mednet"]
    ratios = {
        key: harness.ratio(ours[key], theirs[key])
        for key in (
            "first_batch_s",
            "first_epoch_s",
            "cold_first_epoch_s",
            "warm_samples_per_s",
            "ranks_pss_mb",
        )
    }
    return {"rows": rows, "ratios": ratios}


def markdown(summary: dict[str, Any], items: int) -> str:
    header = [
        "data module",
        "decodes, 1st run",
        "decodes, 2nd run",
        "2nd run: first batch (s)",
        "2nd run: 1st epoch (s)",
        "2nd run, cold: 1st epoch (s)",
        "warm samples/s",
        "2 ranks, 1st run: decodes",
        "2 ranks: PSS sum (MiB)",
    ]
    names = {
        "mednet": "mednet 2.1 `CachingDataModule`, `cache_samples=True`",
        "shardcache": '`shardcache.mednet.CachingDataModule`, `cache="disk"`',
    }
    rows = []
    for system, row in summary["rows"].items():
        rows.append(
            [
                names[system],
                str(row["first_run_decodes"]),
                f"{row['second_run_decodes']:.0f}",
                f"{row['first_batch_s']:.2f}",
                f"{row['first_epoch_s']:.2f}",
                f"{row['cold_first_epoch_s']:.2f}",
                f"{row['warm_samples_per_s']:,.0f}",
                str(row["ranks_decodes"]),
                f"{row['ranks_pss_mb']:,.0f}",
            ]
        )
    ratios = summary["ratios"]
    lines = [
        f"{items} synthetic 8-bit PNGs through mednet's loader; medians of fresh processes.",
        "",
        harness.markdown_table(header, rows, align="lrrrrrrrr"),
        "",
        f"shardcache/mednet: first batch {ratios['first_batch_s']:.3f}x, 1st epoch "
        f"{ratios['first_epoch_s']:.3f}x (cold {ratios['cold_first_epoch_s']:.3f}x), warm "
        f"{ratios['warm_samples_per_s']:.2f}x, PSS of 2 ranks {ratios['ranks_pss_mb']:.2f}x",
        "Cold: the PNGs (mednet) or the shards (shardcache) dropped from the page cache first "
        f"(at most {max(r['cold_resident_after_drop'] for r in summary['rows'].values()):.1%} "
        "stayed).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.mednet", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="400 images of 256x256 (else 2000 of 512x512)"
    )
    parser.add_argument("--items", type=int, help="train images (default 2000; quick 400)")
    parser.add_argument("--size", type=int, help="image side (default 512; quick 256)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=harness.REPO / "bench-data")
    parser.add_argument("--results-dir", type=Path, default=harness.REPO / "bench-results")
    args = parser.parse_args(argv)
    count = args.items or (400 if args.quick else 2000)
    params = SyntheticParams(count=count, size=args.size or (256 if args.quick else 512))
    dataset = ensure_dataset(params, args.data_dir.resolve())
    work = args.data_dir.resolve() / "mednet-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.perf_counter()
    raw = measure(dataset, args.repeats, work, args.results_dir / "mednet-logs")
    summary = summarise(raw) | {"raw": raw, "wall_s": time.perf_counter() - started}
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "mednet.json").write_text(json.dumps(summary, indent=1) + "\n")
    text = markdown(summary, params.count)
    (args.results_dir / "mednet.md").write_text(text)
    print(text)
    shutil.rmtree(work, ignore_errors=True)
    return summary


if __name__ == "__main__":
    main()
