"""Compare shardcache's cache tiers: what each one costs and what it gains.

``python -m benchmarks.tiers --quick`` (``make bench``) takes a few minutes;
``python -m benchmarks.tiers`` (``make bench-full``) uses 2,000 images of 512x512.

Every measurement runs in a fresh interpreter (`benchmarks.measure`, through
`benchmarks.harness`), repeated ``--repeats`` times with the tiers interleaved
(`benchmarks.tiers_plan`); figures are medians, ratios are taken against the memory tier
of the same run (`benchmarks.tiers_summary`). The page cache stays warm between
processes, on purpose, except for the disk tiers' cold epochs, which drop their shards'
pages first (`benchmarks.cold`). Two disk rows: ``disk`` stores exact 8/16-bit data narrow
(the synthetic PNGs are 8-bit, loaded as float32 / 255), ``disk-float32`` is the same tier
with ``narrow=False``. Results: a table on stdout, and in ``--results-dir``:
``summary.json``, ``report.md`` and ``tiers.png`` (`benchmarks.tiers_report`,
`benchmarks.tiers_plot`).

Measured processes use one torch intra-op thread (``--threads 1``), as DataLoader
workers do: with torch's default of one per core, any other load on the machine makes
every small parallel op (uint8 to float, division, ``stack``) wait for a descheduled
thread, and in-process loading ran 10x to 25x slower here with a load average of 2-5.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness import REPO
from benchmarks.synthetic import SyntheticParams, ensure_dataset
from benchmarks.tiers_plan import Options, measure

QUICK = {"items": 400, "size": 256, "warm_epochs": 2}
FULL = {"items": 2000, "size": 512, "warm_epochs": 2}


def _parser() -> argparse.ArgumentParser:
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
        "--cold-epochs",
        type=int,
        default=2,
        help="epochs after dropping the shards' pages, per disk build process (default 2)",
    )
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
    return parser


def parse_options(argv: Sequence[str] | None) -> Options:
    parser = _parser()
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    parallels = tuple(int(value) for value in args.parallel.split(",") if value.strip())
    if not parallels or args.repeats < 1 or args.scale < 2 or args.cold_epochs < 1:
        parser.error(
            "need at least one --parallel value, --repeats >= 1, --scale >= 2 and "
            "--cold-epochs >= 1"
        )
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
        cold_epochs=args.cold_epochs,
        threads=args.threads or None,
        ddp=args.ddp,
        keep_caches=args.keep_caches,
        data_dir=args.data_dir.resolve(),
        results_dir=args.results_dir.resolve(),
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from benchmarks import tiers_plot, tiers_report
    from benchmarks.tiers_summary import summarise

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
    text = tiers_report.markdown(summary)
    (options.results_dir / "report.md").write_text(text)
    tiers_plot.plot(summary, options.results_dir / "tiers.png")
    print()
    print(text)
    print(f"written: {options.results_dir}/summary.json, report.md, tiers.png")
    return summary


if __name__ == "__main__":
    main()
