"""``shardcache prune``: remove least-recently-used caches, never one in use."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ..core.units import format_size
from ..store.inventory import scan
from ..store.pruning import PrunePolicy, plan_prune, prune
from . import render
from .arguments import UsageError, parse_duration, parse_size
from .base import EXIT_OK, EXIT_PROBLEMS, add_command, require_cache_directory


def register(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: Sequence[argparse.ArgumentParser],
) -> None:
    """Add ``prune`` to ``commands``."""
    parser = add_command(
        commands,
        parents,
        "prune",
        "Remove least-recently-used caches, never one that a live process has open.",
        "SIZE: bytes, or a number with a unit: K, M, G, T alone or with iB (KiB, GiB) are\n"
        "powers of 1024, with B alone (KB, GB) powers of 1000; e.g. 10G, 500MiB.\n"
        "DURATION: a number and a unit among s, m, h, d, w; e.g. 7d, 12h, 1d12h.\n"
        "Stale staging directories count too; builds in progress are left alone.",
    )
    parser.add_argument(
        "--max-size",
        type=parse_size,
        metavar="SIZE",
        help="remove caches, least recently used first, until all of them fit in SIZE",
    )
    parser.add_argument(
        "--older-than",
        type=parse_duration,
        metavar="DURATION",
        help="remove caches not used for DURATION",
    )
    parser.add_argument(
        "-n", "--dry-run", action="store_true", help="say what would be removed, remove nothing"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, cache_dir: Path) -> int:
    """Prune by size and age, or say what would go with ``--dry-run``."""
    if args.max_size is None and args.older_than is None:
        raise UsageError("give --max-size, --older-than, or both")
    if not args.dry_run:
        require_cache_directory(cache_dir)
    entries = scan(cache_dir)
    policy = PrunePolicy(max_size=args.max_size, older_than=args.older_than)
    result = plan_prune(entries, policy) if args.dry_run else prune(cache_dir, entries, policy)
    removed = [o.entry for o in result.outcomes if o.removal.removed]
    kept = [o for o in result.outcomes if not o.removal.removed]
    if args.json:
        render.print_json(
            {
                "cache_dir": str(cache_dir),
                "dry_run": args.dry_run,
                "removed": [render.entry_json(entry) for entry in removed],
                "kept": [render.entry_json(o.entry) | {"reason": o.removal.reason} for o in kept],
                "freed_bytes": result.freed_bytes,
                "remaining_bytes": result.remaining_bytes,
                "max_size_reached": not result.over_limit,
            }
        )
        return EXIT_PROBLEMS if result.over_limit else EXIT_OK
    verb = "would remove" if args.dry_run else "removed"
    for outcome in result.outcomes:
        entry = outcome.entry
        described = (
            f"{entry.name} ({format_size(entry.size)}, last used "
            f"{render.local_time(entry.last_used)})"
        )
        if outcome.removal.removed:
            print(f"{verb} {described}")
        else:
            print(f"kept {described}: {outcome.removal.reason}")
    remain = render.plural(result.remaining_count, "cache")
    rest = f"{remain} ({format_size(result.remaining_bytes)}) remain"
    if result.outcomes:
        print(
            f"{'would free' if args.dry_run else 'freed'} {format_size(result.freed_bytes)}; {rest}"
        )
    else:
        print(f"nothing to prune; {rest}")
    if result.over_limit:
        limit = format_size(args.max_size)
        print(f"still over --max-size {limit}: the rest is in use or being built")
        return EXIT_PROBLEMS
    return EXIT_OK
