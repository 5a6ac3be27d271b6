"""``shardcache verify [NAME...] [--repair]``: read every shard and check it in full."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.units import format_size
from ..store.inventory import DAMAGED, PUBLISHED, CacheEntry, scan
from ..store.removal import remove
from ..store.verification import verify_cache
from . import render
from .arguments import NAME_HELP, resolve_names
from .base import EXIT_OK, EXIT_PROBLEMS, add_command, require_cache_directory

if TYPE_CHECKING:
    from tqdm import tqdm


def register(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: Sequence[argparse.ArgumentParser],
) -> None:
    """Add ``verify`` to ``commands``."""
    parser = add_command(
        commands,
        parents,
        "verify",
        "Check every shard in full: its header and its xxh3-128 checksum.",
        "Names every damaged file and exits with status 1 when one is found.\n"
        "A cache cannot be rebuilt from the command line: the raw data loader that made it\n"
        "cannot be re-created from its manifest. --repair removes damaged caches instead;\n"
        "the next run that uses one (prepare_data, or ensure_cache) rebuilds it.",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"{NAME_HELP} (default: all)")
    parser.add_argument(
        "--repair", action="store_true", help="remove damaged caches so the next run rebuilds them"
    )
    parser.set_defaults(handler=run)


def _verify_one(
    entry: CacheEntry, cache_dir: Path, *, repair: bool, bar: tqdm[Any], say: Callable[[str], None]
) -> dict[str, Any]:
    """Check one cache (and remove it when damaged and ``repair``); its JSON report."""
    manifest, problems = verify_cache(entry.path, bar.update)
    report: dict[str, Any] = {
        "name": entry.name,
        "path": str(entry.path),
        "ok": not problems,
        "problems": [{"file": str(p.file), "problem": p.problem} for p in problems],
        "removed": False,
        "not_removed_reason": None,
    }
    if manifest is not None and not problems:
        say(
            f"ok       {entry.name} ({manifest.num_samples} samples, "
            f"{render.plural(len(manifest.shards), 'shard')}, {format_size(entry.size)})"
        )
        return report
    say(f"DAMAGED  {entry.name}")
    for problem in problems:
        say(f"  {problem.file.name}: {problem.problem}")
    if repair:
        removal = remove(cache_dir, entry.path, entry.name, entry.key, respect_leases=False)
        report["removed"] = removal.removed
        report["not_removed_reason"] = removal.reason
        say(
            "  removed: the next run that uses it rebuilds it"
            if removal.removed
            else f"  not removed: {removal.reason}"
        )
    return report


def _summary(reports: list[dict[str, Any]], repair: bool) -> str:
    damaged = sum(not report["ok"] for report in reports)
    verified = f"{render.plural(len(reports), 'cache')} verified"
    if not damaged:
        return f"{verified}, all intact"
    if repair:
        removed = sum(report["removed"] for report in reports)
        return f"{verified}, {damaged} damaged ({removed} removed)"
    return (
        f"{verified}, {damaged} damaged; `shardcache verify --repair` removes damaged caches, "
        "and the next run that uses one rebuilds it"
    )


def run(args: argparse.Namespace, cache_dir: Path) -> int:
    """Verify the chosen caches (default: all) and report each."""
    from tqdm import tqdm  # here, not at the top: every other subcommand starts without it

    if args.repair:
        require_cache_directory(cache_dir)
    entries = scan(cache_dir)
    chosen = resolve_names(entries, args.names) if args.names else entries
    targets = [entry for entry in chosen if entry.state in {PUBLISHED, DAMAGED}]
    say: Callable[[str], None] = (lambda _: None) if args.json else tqdm.write
    for entry in chosen:
        if entry not in targets:
            say(f"skipped  {entry.name}: {entry.state}, not a published cache")
    if not targets:
        if args.json:
            render.print_json({"cache_dir": str(cache_dir), "caches": [], "ok": True})
        else:
            print(f"no caches to verify in {cache_dir}")
        return EXIT_OK
    total = sum(entry.manifest.total_bytes for entry in targets if entry.manifest)
    with tqdm(
        total=total,
        desc="verifying",
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=None,
        leave=False,
    ) as bar:
        reports = [
            _verify_one(entry, cache_dir, repair=args.repair, bar=bar, say=say) for entry in targets
        ]
    damaged = any(not report["ok"] for report in reports)
    if args.json:
        render.print_json({"cache_dir": str(cache_dir), "caches": reports, "ok": not damaged})
    else:
        print(_summary(reports, args.repair))
    return EXIT_PROBLEMS if damaged else EXIT_OK
