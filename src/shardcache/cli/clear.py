"""``shardcache clear NAME... | --all``: remove caches and interrupted builds."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.units import format_size
from ..store.inventory import PUBLISHED, CacheEntry, scan
from ..store.removal import empty_trash, remove
from ..store.tree import CacheTree
from . import render
from .arguments import NAME_HELP, UsageError, resolve_names
from .base import EXIT_OK, EXIT_PROBLEMS, add_command, require_cache_directory


def register(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: Sequence[argparse.ArgumentParser],
) -> None:
    """Add ``clear`` to ``commands``."""
    parser = add_command(
        commands,
        parents,
        "clear",
        "Remove caches, and stale staging directories.",
        "Asks for confirmation on a terminal. A cache whose build is in progress is skipped.\n"
        "A process reading a removed cache keeps working: files are renamed away and\n"
        "unlinked, never truncated. --all also empties what interrupted removals left.",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help=NAME_HELP)
    parser.add_argument("--all", action="store_true", help="remove every cache")
    parser.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    parser.set_defaults(handler=run)


def _stdin_is_terminal() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def _confirmed(targets: list[CacheEntry], cache_dir: Path) -> bool:
    """Ask on the terminal (prompts go to stderr, so stdout stays clean for --json)."""
    size = format_size(sum(entry.size for entry in targets))
    for entry in targets:
        print(f"  {entry.name} ({entry.state}, {format_size(entry.size)})", file=sys.stderr)
    question = f"Remove {render.plural(len(targets), 'cache')} ({size}) from {cache_dir}?"
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in {"y", "yes"}


def _empty_trash(cache_dir: Path) -> int:
    """What interrupted removals left in ``.trash``, removed: the bytes freed."""
    try:
        tree = CacheTree.open(cache_dir)
    except FileNotFoundError:
        return 0
    with tree:
        return empty_trash(tree)


def run(args: argparse.Namespace, cache_dir: Path) -> int:
    """Remove the named caches, or all of them."""
    if args.all == bool(args.names):
        raise UsageError("name the caches to clear, or give --all (not both)")
    require_cache_directory(cache_dir)
    entries = scan(cache_dir)
    targets = entries if args.all else resolve_names(entries, args.names)
    if targets and not args.yes and _stdin_is_terminal() and not _confirmed(targets, cache_dir):
        print("nothing removed", file=sys.stderr)
        return EXIT_PROBLEMS
    removed: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    lines: list[str] = []
    freed = 0
    for entry in targets:
        removal = remove(cache_dir, entry.path, entry.name, entry.key, respect_leases=False)
        if not removal.removed:
            skipped.append(render.entry_json(entry) | {"reason": removal.reason})
            lines.append(f"skipped {entry.name}: {removal.reason}")
            continue
        freed += entry.size
        removed.append(render.entry_json(entry))
        what = format_size(entry.size)
        if entry.state != PUBLISHED:
            what = f"{entry.state}, {what}"
        note = "; a running process has it open and keeps reading it" if entry.in_use else ""
        lines.append(f"removed {entry.name} ({what}){note}")
    trash = _empty_trash(cache_dir) if args.all else 0
    if trash:
        lines.append(f"removed what interrupted removals left in .trash ({format_size(trash)})")
    freed += trash
    if args.json:
        render.print_json(
            {
                "cache_dir": str(cache_dir),
                "removed": removed,
                "skipped": skipped,
                "freed_bytes": freed,
            }
        )
    else:
        if not targets:
            lines.append(f"no caches in {cache_dir}")
        for line in lines:
            print(line)
        if targets:
            print(f"freed {format_size(freed)}")
    return EXIT_PROBLEMS if skipped else EXIT_OK
