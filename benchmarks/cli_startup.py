"""How long ``shardcache list`` takes, start to exit, as whole processes.

    python -m benchmarks.cli_startup [--tree NAME=SRC ...] [--repeats 5] [--importtime]

Builds once a cache directory holding ``--caches`` caches of ``--samples`` tiny samples
each (with the store of the tree this module runs with; every tree compared must read the
same format), then times ``python -m shardcache list --cache-dir DIR`` in fresh
processes, each ``--tree``'s source directory first on ``PYTHONPATH``. One untimed
warm-up run per tree (it also writes the tree's ``.pyc`` files), then ``--repeats``
rounds with the trees interleaved, the order rotating per round; medians, ratios against
the first tree (`benchmarks.harness`). Every tree must print the same listing.
``--importtime`` adds ``python -X importtime`` of the command per tree: the modules that
take longest to import, cumulative (with what they import) and on their own.

Example, before and after a restructure::

    git worktree add /tmp/before OLD_COMMIT
    python -m benchmarks.cli_startup --tree before=/tmp/before/src --tree after=src
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness import REPO, markdown_table, median, ratio

SUBSET_NAMES = "abcdefghijklmnopqrstuvwxyz"


class TinyLoader:
    """Sample ``i``: a seeded ``float32 [1, 8, 8]`` tensor, label ``i % 2``.

    A module-level class: the cache key hashes the loader's class source.
    """

    def sample(self, item: Any) -> tuple[Any, dict[str, Any]]:
        import torch

        generator = torch.Generator().manual_seed(int(item))
        return torch.rand((1, 8, 8), generator=generator), {"label": int(item) % 2}

    def label(self, item: Any) -> int:
        return int(item) % 2


def ensure_caches(cache_dir: Path, caches: int, samples: int) -> None:
    """``caches`` published caches under ``cache_dir`` (built once, then reused)."""
    from shardcache.store import ensure_cache

    for number in range(caches):
        subset = f"subset-{SUBSET_NAMES[number % 26]}{number // 26 or ''}"
        items = list(range(number * samples, (number + 1) * samples))
        ensure_cache(cache_dir, subset, items, TinyLoader()).close()


def _env(src: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(src)}


def _command(cache_dir: Path, *python_options: str) -> list[str]:
    return [
        sys.executable,
        *python_options,
        "-m",
        "shardcache",
        "list",
        "--cache-dir",
        str(cache_dir),
    ]


def check_trees(trees: dict[str, Path], cache_dir: Path, cwd: Path) -> str:
    """Each tree imports its own shardcache and prints the same listing; returns it."""
    listings = {}
    for name, src in trees.items():
        where = subprocess.run(
            [sys.executable, "-c", "import shardcache.cli; print(shardcache.cli.__file__)"],
            env=_env(src),
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if not Path(where).resolve().is_relative_to(src.resolve()):
            raise SystemExit(f"tree {name}: imports shardcache from {where}, not from {src}")
        listings[name] = subprocess.run(
            _command(cache_dir), env=_env(src), cwd=cwd, capture_output=True, text=True, check=True
        ).stdout
    first = next(iter(listings.values()))
    differing = [name for name, text in listings.items() if text != first]
    if differing:
        raise SystemExit(f"trees {', '.join(differing)} print another listing than the first")
    return first


def time_once(src: Path, cache_dir: Path, cwd: Path) -> tuple[float, float]:
    """Wall seconds from starting ``python -m shardcache list`` to its exit, and its CPU
    seconds (user + system: what other load on the machine inflates least)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(
        _command(cache_dir), env=_env(src), cwd=cwd, stdout=subprocess.DEVNULL, check=True
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def time_trees(
    trees: dict[str, Path], cache_dir: Path, cwd: Path, repeats: int
) -> dict[str, list[tuple[float, float]]]:
    """One warm-up run per tree, then ``repeats`` interleaved rounds (the order rotating)."""
    names = list(trees)
    for name in names:
        time_once(trees[name], cache_dir, cwd)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for round_number in range(repeats):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(time_once(trees[name], cache_dir, cwd))
    return times


def import_times(src: Path, cache_dir: Path, cwd: Path, top: int) -> tuple[str, str, str]:
    """``python -X importtime`` of the command: a one-line total, and markdown tables of the
    ``top`` slowest imports by cumulative time (with what they import) and by self time."""
    stderr = subprocess.run(
        _command(cache_dir, "-X", "importtime"),
        env=_env(src),
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=True,
    ).stderr
    entries = []  # (self us, cumulative us, module)
    for line in stderr.splitlines():
        if line.startswith("import time:") and "self [us]" not in line:
            own, cumulative, name = line.removeprefix("import time:").split("|")
            entries.append((int(own), int(cumulative), name.strip()))
    total = sum(own for own, _, _ in entries) / 1e3
    header = ["module", "cumulative ms", "self ms"]

    def table(key: int) -> str:
        chosen = sorted(entries, key=lambda entry: entry[key], reverse=True)[:top]
        rows = [[f"`{name}`", f"{cum / 1e3:.1f}", f"{own / 1e3:.1f}"] for own, cum, name in chosen]
        return markdown_table(header, rows, "lrr")

    return f"{len(entries)} modules, {total:.0f} ms of import time in all", table(1), table(0)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cli_startup", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument(
        "--tree",
        action="append",
        metavar="NAME=SRC",
        help="a source tree to time (repeatable; default: current=src of this repository)",
    )
    parser.add_argument("--caches", type=int, default=10, help="caches in the directory")
    parser.add_argument("--samples", type=int, default=20, help="samples per cache")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per tree")
    parser.add_argument(
        "--cache-dir", type=Path, default=REPO / "bench-data" / "cli-startup" / "cache"
    )
    parser.add_argument("--importtime", action="store_true", help="also python -X importtime")
    parser.add_argument("--top", type=int, default=12, help="rows of the import tables")
    args = parser.parse_args(argv)
    pairs = args.tree or [f"current={REPO / 'src'}"]
    if any("=" not in pair for pair in pairs):
        parser.error("--tree takes NAME=SRC")
    args.trees = {name: Path(src).resolve() for name, src in (p.split("=", 1) for p in pairs)}
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    cache_dir = args.cache_dir.resolve()
    cwd = cache_dir.parent  # not a source tree: nothing there shadows the trees' shardcache
    ensure_caches(cache_dir, args.caches, args.samples)
    listing = check_trees(args.trees, cache_dir, cwd)
    load_before = os.getloadavg()
    times = time_trees(args.trees, cache_dir, cwd, args.repeats)
    load_after = os.getloadavg()
    walls = {name: [wall for wall, _ in runs] for name, runs in times.items()}
    first = median(next(iter(walls.values())))
    rows = [
        [
            name,
            f"{median(values) or 0:.3f}",
            f"{min(values):.3f} - {max(values):.3f}",
            f"{ratio(median(values), first) or 0:.2f}x",
            f"{median(cpu for _, cpu in times[name]) or 0:.3f}",
            " ".join(f"{value:.3f}" for value in values),
        ]
        for name, values in walls.items()
    ]
    header = ["tree", "median (s)", "min - max (s)", "x first", "CPU median (s)", "runs (s)"]
    print(
        f"`python -m shardcache list --cache-dir {cache_dir}` ({args.caches} caches of "
        f"{args.samples} samples; {len(listing.splitlines())} lines of output, the same for "
        f"every tree); median of {args.repeats} interleaved runs after one warm-up each; "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after.\n"
    )
    print(markdown_table(header, rows, "lrrrrl"))
    if args.importtime:
        for name, src in args.trees.items():
            total, by_cumulative, by_self = import_times(src, cache_dir, cwd, args.top)
            print(f"\n`python -X importtime`, tree {name}: {total}. Slowest, cumulative:\n")
            print(by_cumulative)
            print(f"\nSlowest on their own ({name}):\n")
            print(by_self)


if __name__ == "__main__":
    main()
