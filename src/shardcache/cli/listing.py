"""``shardcache list``: every cache with its samples, size, state, creation and last use."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ..core.units import format_size
from ..store.inventory import scan
from . import render
from .base import EXIT_OK, add_command


def register(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: Sequence[argparse.ArgumentParser],
) -> None:
    """Add ``list`` to ``commands``."""
    parser = add_command(
        commands,
        parents,
        "list",
        "List every cache: name, samples, size, state, creation and last use.",
        "States: published (ready), damaged (fails its checks), building (a live process\n"
        "holds its build lock), stale staging (an interrupted build; the next build of the\n"
        "same data resumes it). 'in use': a live process has the cache open.",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, cache_dir: Path) -> int:
    """Print the cache directory's entries."""
    entries = scan(cache_dir)
    total = sum(entry.size for entry in entries)
    if args.json:
        render.print_json(
            {
                "cache_dir": str(cache_dir),
                "caches": [render.entry_json(entry) for entry in entries],
                "total_bytes": total,
            }
        )
        return EXIT_OK
    if not entries:
        missing = "" if cache_dir.is_dir() else " (the directory does not exist)"
        print(f"no caches in {cache_dir}{missing}")
        return EXIT_OK
    rows = [("NAME", "SAMPLES", "SIZE", "STATE", "CREATED", "LAST USED")]
    rows += [
        (
            entry.name,
            render.samples(entry),
            format_size(entry.size),
            render.state(entry),
            render.local_time(entry.created),
            render.local_time(entry.last_used),
        )
        for entry in entries
    ]
    for line in render.table(rows, right={1, 2}):
        print(line)
    print(f"{render.plural(len(entries), 'cache')}, {format_size(total)} in {cache_dir}")
    return EXIT_OK
