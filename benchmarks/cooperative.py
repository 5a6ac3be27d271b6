"""First build of a cache by a multi-rank job: every rank decoding a slice, or one builder.

``python -m benchmarks.cooperative`` (part of ``make bench-full``) times the first build of
one disk-tier cache by a job of 2 ranks on one node, and of 4 ranks on 2 simulated nodes
sharing one cache directory, with each builder (`benchmarks._cooperative_child`):

- ``single``: what a Lightning job did before cooperative builds, and does with one rank:
  local rank 0 of each node builds in ``prepare_data``, the others wait;
- ``cooperative``: every rank decodes a slice in ``setup``; one publishes.

The same ``parallel`` setting on every rank. The workload is decode-bound: synthetic
512x512 PNGs decoded and resized to 64x64 (4 KiB stored per sample), so that shard writes
cost little beside the decoding. Ranks are fresh processes (`benchmarks.harness`); the
configurations are interleaved, in a rotating order, ``--repeats`` times; figures are
medians of the job's build time (its slowest rank, from the barrier that starts the build
to the cache being open). A cooperative build can only gain from cores that are free:
`cpu_check` measures whether a second core was free before and after (pure-Python work
split over 2 processes: ~0.5 of one process's time when a second core is free, ~1.0 when
other load takes it), and the load averages are recorded beside the figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    REPO,
    child_env,
    markdown_table,
    median,
    ratio,
    run_children,
)
from benchmarks.synthetic import SyntheticParams, ensure_dataset

CHILD = "benchmarks._cooperative_child"
CHILD_TIMEOUT_S = 1800
JOBS = (("2 ranks, 1 node", 2, 2), ("4 ranks, 2 nodes", 4, 2))
"""Each job: its name, ranks, ranks per node (one cache directory shared by all)."""
BUILDERS = ("single", "cooperative")
TARGET = 0.65
"""Issue 15: the cooperative 2-rank build at most 0.65x the single builder's (2 cores)."""

CPU_WORK = 20_000_000
"""Loop iterations of `cpu_check`: about 1.5 s in one process here."""


def _burn(count: int) -> int:
    total = 0
    for value in range(count):
        total += value * value
    return total


def _work_in(processes: int, work: int) -> float:
    context = multiprocessing.get_context("spawn")
    started = time.perf_counter()
    workers = [context.Process(target=_burn, args=(work // processes,)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return time.perf_counter() - started


def cpu_check(work: int = CPU_WORK, repeats: int = 3) -> dict[str, Any]:
    """Whether a second core is free: W in 1 process against W/2 in each of 2, interleaved.

    Process start-up counts in both, so a small ``work`` (a smoke test) reads high.
    """
    one, two = [], []
    for _ in range(repeats):
        one.append(_work_in(1, work))
        two.append(_work_in(2, work))
    return {
        "one_process_s": [round(value, 2) for value in one],
        "two_halves_s": [round(value, 2) for value in two],
        "ratio": round(ratio(median(two), median(one)) or 0.0, 2),
        "load_average": [round(value, 2) for value in os.getloadavg()],
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cooperative", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--items", type=int, default=2000, help="train images (default 2000)")
    parser.add_argument("--size", type=int, default=512, help="image side (default 512)")
    parser.add_argument(
        "--thumbnail", type=int, default=64, help="decoded images are resized to this side"
    )
    parser.add_argument("--parallel", type=int, default=-1, help="`parallel` on every rank")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--cpu-work", type=int, default=CPU_WORK, help="loop iterations of the free-core check"
    )
    parser.add_argument("--data-dir", type=Path, default=REPO / "bench-data")
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench-results")
    return parser


def _job(
    work: Path, base: dict[str, Any], name: str, ranks: int, per_node: int, builder: str, tag: str
) -> dict[str, Any]:
    """One job's ranks, run together on a fresh cache directory; the job's figures."""
    cache_dir = work / f"cache-{tag}"
    specs = [
        (
            f"{tag}-rank{rank}",
            {
                **base,
                "task": "rank",
                "builder": builder,
                "rank": rank,
                "world_size": ranks,
                "ranks_per_node": per_node,
                "init_file": str(work / f"{tag}.init"),
                "cache_dir": str(cache_dir),
                "decode_log": str(work / f"decodes-{tag}-rank{rank}"),
            },
        )
        for rank in range(ranks)
    ]
    runs = run_children(
        CHILD,
        specs,
        timeout=CHILD_TIMEOUT_S,
        env=child_env(),
        scratch=work / "children",
        logs=work / "logs",
    )
    results = [run.expect() for run in runs]
    shutil.rmtree(cache_dir, ignore_errors=True)
    decodes = [result["decodes"] for result in results]
    if sum(decodes) != base["items"] or {r["served"] for r in results} != {base["items"]}:
        raise RuntimeError(f"{tag}: decodes per rank {decodes}, expected {base['items']} in all")
    return {
        "job": name,
        "builder": builder,
        "seconds": max(result["seconds"] for result in results),
        "decodes_per_rank": decodes,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)
    command = " ".join(
        ["python -m benchmarks.cooperative", *(sys.argv[1:] if argv is None else argv)]
    )
    params = SyntheticParams(count=args.items, size=args.size, mode="gray")
    dataset = ensure_dataset(params, args.data_dir)
    work = args.data_dir / "cooperative-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    base = {
        "split_path": str(dataset.split_path),
        "data_root": str(dataset.root),
        "thumbnail": args.thumbnail,
        "parallel": args.parallel,
        "items": args.items,
        "torch_threads": 1,
    }
    started = time.perf_counter()
    load_before = [round(value, 2) for value in os.getloadavg()]
    cpu_before = cpu_check(args.cpu_work)
    print(f"cpu check before: {json.dumps(cpu_before)}", flush=True)
    configurations = [(job, builder) for job in JOBS for builder in BUILDERS]
    runs: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        shift = repeat % len(configurations)
        for (name, ranks, per_node), builder in configurations[shift:] + configurations[:shift]:
            tag = f"{ranks}r-{builder}-{repeat}"
            run = _job(work, base, name, ranks, per_node, builder, tag)
            run["repeat"] = repeat
            runs.append(run)
            print(
                f"{name:<17} {builder:<12} repeat {repeat + 1}/{args.repeats}: "
                f"{run['seconds']:.2f} s, decodes per rank {run['decodes_per_rank']}",
                flush=True,
            )
    cpu_after = cpu_check(args.cpu_work)
    print(f"cpu check after: {json.dumps(cpu_after)}", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    summary = summarise(runs)
    summary.update(
        command=command,
        workload=f"{args.items} gray PNGs of {args.size}x{args.size}, decoded and resized to "
        f"{args.thumbnail}x{args.thumbnail}; parallel={args.parallel} on every rank",
        wall_s=round(time.perf_counter() - started, 1),
        cpu_check={"before": cpu_before, "after": cpu_after},
        load_average={"before": load_before, "after": [round(v, 2) for v in os.getloadavg()]},
        cpus=os.cpu_count(),
        runs=runs,
    )
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "cooperative.json").write_text(json.dumps(summary, indent=1) + "\n")
    text = report(summary)
    (args.results_dir / "cooperative.md").write_text(text)
    print()
    print(text)
    return summary


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per job and builder, and the cooperative/single ratio of each job."""
    figures: dict[str, Any] = {}
    for name, _, _ in JOBS:
        medians = {
            builder: median(
                r["seconds"] for r in runs if (r["job"], r["builder"]) == (name, builder)
            )
            for builder in BUILDERS
        }
        figures[name] = {
            **{f"{builder}_s": value for builder, value in medians.items()},
            "ratio": ratio(medians["cooperative"], medians["single"]),
        }
    two = figures[JOBS[0][0]]["ratio"]
    return {"jobs": figures, "target": TARGET, "meets_target": two is not None and two <= TARGET}


def report(summary: dict[str, Any]) -> str:
    """The figures as a markdown table, with the conditions they were taken in."""
    rows = []
    for name, job in summary["jobs"].items():
        runs = {
            builder: ", ".join(
                f"{r['seconds']:.2f}"
                for r in summary["runs"]
                if (r["job"], r["builder"]) == (name, builder)
            )
            for builder in BUILDERS
        }
        rows.append(
            [
                name,
                f"{job['single_s']:.2f} ({runs['single']})",
                f"{job['cooperative_s']:.2f} ({runs['cooperative']})",
                f"{job['ratio']:.2f}",
            ]
        )
    header = ["job", "single builder, s (runs)", "cooperative, s (runs)", "cooperative / single"]
    check = summary["cpu_check"]
    lines = [
        f"First build, {summary['workload']}; medians of {len(summary['runs']) // 4} "
        "interleaved runs (the job's slowest rank).",
        "",
        markdown_table(header, rows, "lrrr"),
        "",
        f"Target for 2 ranks: <= {summary['target']}x "
        f"({'met' if summary['meets_target'] else 'missed'}).",
        f"Second core free? cpu check (2 halves / 1 whole): {check['before']['ratio']} before, "
        f"{check['after']['ratio']} after (0.5: free, 1.0: taken).",
        f"Load average: {summary['load_average']['before']} before, "
        f"{summary['load_average']['after']} after, on {summary['cpus']} CPUs.",
        f"Command: `{summary['command']}` ({summary['wall_s']} s).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
