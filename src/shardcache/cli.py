"""The ``shardcache`` command (also ``python -m shardcache``): manage the disk caches.

One small handler per subcommand; the work is done by `shardcache.store.inventory`, this
module parses arguments and prints. Every subcommand takes ``--cache-dir`` and ``--json``;
the JSON schemas are documented in the README's "Managing the cache" and kept stable.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import platformdirs
from tqdm import tqdm

from .errors import ShardCacheError
from .store.inventory import (
    BUILDING,
    DAMAGED,
    PUBLISHED,
    CacheEntry,
    empty_trash,
    label_counts,
    remove,
    scan,
    verify_cache,
)
from .store.layout import ENVIRONMENT_VARIABLE, resolve_cache_dir
from .units import format_size

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2

EXIT_STATUS_HELP = """\
exit status:
  0  success
  1  problems found: a damaged cache, a cache that could not be removed,
     a prune limit that could not be reached, a declined confirmation
  2  usage error: a bad option or an unknown cache name"""

NAME_HELP = (
    "a cache's name as `shardcache list` shows it, a unique prefix of that name, "
    "or a prefix of its key"
)


class UsageError(Exception):
    """The command line asks for something that cannot be (exit status 2)."""


# --- parsing of sizes and durations ---------------------------------------------------------

_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgtp])(i?)(b?)|(b?))\s*$", re.IGNORECASE)
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?)\s*([smhdw])", re.IGNORECASE)
_DURATION = re.compile(r"(?:\s*\d+(?:\.\d*)?\s*[smhdw])+\s*", re.IGNORECASE)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_size(text: str) -> int:
    """Bytes in ``text``: ``10G``, ``500MiB``, ``1.5GiB``, ``2GB``, ``4096``.

    K, M, G, T, P alone or with ``iB`` are powers of 1024; with ``B`` alone (``GB``) powers
    of 1000.
    """
    match = _SIZE.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r}: expected a number with an optional unit, like 10G, "
            "500MiB or 2GB"
        )
    number, prefix, binary, byte = match[1], match[2], match[3], match[4]
    if prefix is None:
        return int(float(number))
    power = "kmgtp".index(prefix.lower()) + 1
    base = 1000 if byte and not binary else 1024
    return int(float(number) * base**power)


def parse_duration(text: str) -> timedelta:
    """The time span in ``text``: ``7d``, ``12h``, ``1d12h``, ``30m``, ``2w``, ``90s``."""
    if not _DURATION.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: expected a number and a unit (s, m, h, d, w), "
            "like 7d, 12h or 1d12h"
        )
    parts = _DURATION_PART.finditer(text)
    return timedelta(seconds=sum(float(part[1]) * _SECONDS[part[2].lower()] for part in parts))


# --- output helpers -------------------------------------------------------------------------


def _local(moment: datetime | None) -> str:
    """``2025-11-25 14:03`` in local time, or ``-``."""
    return moment.astimezone().strftime("%Y-%m-%d %H:%M") if moment else "-"


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds") if moment else None


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _state(entry: CacheEntry) -> str:
    return f"{entry.state}, in use" if entry.in_use else entry.state


def _samples(entry: CacheEntry) -> str:
    """The sample count; ``done/total`` for a build in progress."""
    if entry.samples is None:
        return "-"
    if entry.state == BUILDING and entry.owner and isinstance(entry.owner.get("done"), int):
        return f"{entry.owner['done']}/{entry.samples}"
    return str(entry.samples)


def _entry_json(entry: CacheEntry) -> dict[str, Any]:
    """One entry in the stable JSON schema shared by every subcommand."""
    return {
        "name": entry.name,
        "path": str(entry.path),
        "state": entry.state.replace(" ", "_"),
        "key": entry.key,
        "subset": entry.subset,
        "samples": entry.samples,
        "bytes": entry.size,
        "created": _iso(entry.created),
        "last_used": _iso(entry.last_used),
        "in_use": entry.in_use,
        "problem": entry.problem,
        "owner": entry.owner,
    }


def _print_json(document: dict[str, Any]) -> None:
    print(json.dumps(document, indent=2))


def _table(rows: Sequence[tuple[str, ...]], right: set[int]) -> list[str]:
    """Rows aligned in columns two spaces apart; columns in ``right`` right-aligned."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if column in right else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _resolve(entries: list[CacheEntry], names: Sequence[str]) -> list[CacheEntry]:
    """The entries ``names`` designate, in order; `UsageError` for unknown or ambiguous."""
    chosen: list[CacheEntry] = []
    for name in names:
        found = [entry for entry in entries if name in {entry.name, entry.key}]
        if not found:
            found = [
                entry
                for entry in entries
                if entry.name.startswith(name) or (entry.key or "").startswith(name.lower())
            ]
        if not found:
            raise UsageError(f"no cache named {name!r} (see `shardcache list`)")
        if len({entry.name for entry in found}) > 1:
            candidates = ", ".join(sorted({entry.name for entry in found}))
            raise UsageError(f"{name!r} is ambiguous: it matches {candidates}")
        chosen.extend(entry for entry in found if entry not in chosen)
    return chosen


# --- subcommands ----------------------------------------------------------------------------


def _list(args: argparse.Namespace, cache_dir: Path) -> int:
    entries = scan(cache_dir)
    total = sum(entry.size for entry in entries)
    if args.json:
        _print_json(
            {
                "cache_dir": str(cache_dir),
                "caches": [_entry_json(entry) for entry in entries],
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
            _samples(entry),
            format_size(entry.size),
            _state(entry),
            _local(entry.created),
            _local(entry.last_used),
        )
        for entry in entries
    ]
    for line in _table(rows, right={1, 2}):
        print(line)
    print(f"{_plural(len(entries), 'cache')}, {format_size(total)} in {cache_dir}")
    return EXIT_OK


def _flatten(prefix: str, value: Any) -> list[tuple[str, str]]:
    """Nested key inputs as ``a.b: value`` pairs."""
    if isinstance(value, dict) and value:
        return [
            pair
            for name in sorted(value)
            for pair in _flatten(f"{prefix}.{name}" if prefix else name, value[name])
        ]
    return [(prefix, value if isinstance(value, str) else json.dumps(value))]


def _info(args: argparse.Namespace, cache_dir: Path) -> int:
    entry = _resolve(scan(cache_dir), [args.name])[0]
    manifest = entry.manifest
    counts = label_counts(manifest) if manifest else {}
    if args.json:
        document = _entry_json(entry)
        if manifest is not None:
            document |= {
                "library_version": manifest.library_version,
                "format_version": manifest.format_version,
                "key_inputs": manifest.key_inputs,
                "label_counts": [{"label": label, "count": n} for label, n in counts.items()],
                "shards": [asdict(shard) for shard in manifest.shards],
            }
        _print_json(document)
        return EXIT_PROBLEMS if entry.state == DAMAGED else EXIT_OK
    fields = [("path", str(entry.path)), ("state", _state(entry)), ("key", entry.key or "-")]
    if manifest is not None:
        labels = ", ".join(
            f"{'none' if label is None else label}: {n}" for label, n in counts.items()
        )
        fields += [
            ("subset", manifest.subset),
            ("samples", str(manifest.num_samples)),
            ("size", f"{format_size(entry.size)} in {_plural(len(manifest.shards), 'shard')}"),
            ("labels", labels),
            (
                "created",
                f"{_local(entry.created)} by shardcache {manifest.library_version} "
                f"(format {manifest.format_version})",
            ),
            ("last used", _local(entry.last_used)),
        ]
    else:
        fields += [("size", format_size(entry.size)), ("last used", _local(entry.last_used))]
    if entry.problem:
        fields.append(("problem", entry.problem))
    if entry.owner:
        fields.append(("built by", json.dumps(entry.owner, sort_keys=True)))
    print(entry.name)
    width = max(len(name) for name, _ in fields) + 1
    for name, value in fields:
        print(f"  {name + ':':<{width}} {value}")
    if manifest is not None:
        print("key inputs:")
        pairs = _flatten("", manifest.key_inputs)
        width = max(len(name) for name, _ in pairs) + 1
        for name, value in pairs:
            print(f"  {name + ':':<{width}} {value}")
        print("shards:")
        rows = [
            (shard.file, f"samples {shard.start}-{shard.stop - 1}", format_size(shard.bytes))
            for shard in manifest.shards
        ]
        for line in _table(rows, right={2}):
            print(f"  {line}")
    return EXIT_PROBLEMS if entry.state == DAMAGED else EXIT_OK


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
            f"{_plural(len(manifest.shards), 'shard')}, {format_size(entry.size)})"
        )
        return report
    say(f"DAMAGED  {entry.name}")
    for problem in problems:
        say(f"  {problem.file.name}: {problem.problem}")
    if repair:
        removal = remove(cache_dir, entry, respect_leases=False)
        report["removed"] = removal.removed
        report["not_removed_reason"] = removal.reason
        say(
            "  removed: the next run that uses it rebuilds it"
            if removal.removed
            else f"  not removed: {removal.reason}"
        )
    return report


def _verify(args: argparse.Namespace, cache_dir: Path) -> int:
    entries = scan(cache_dir)
    chosen = _resolve(entries, args.names) if args.names else entries
    targets = [entry for entry in chosen if entry.state in {PUBLISHED, DAMAGED}]
    say: Callable[[str], None] = (lambda _: None) if args.json else tqdm.write
    for entry in chosen:
        if entry not in targets:
            say(f"skipped  {entry.name}: {entry.state}, not a published cache")
    if not targets:
        if args.json:
            _print_json({"cache_dir": str(cache_dir), "caches": [], "ok": True})
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
    damaged = sum(not report["ok"] for report in reports)
    if args.json:
        _print_json({"cache_dir": str(cache_dir), "caches": reports, "ok": not damaged})
    elif damaged:
        hint = (
            ""
            if args.repair
            else "; `shardcache verify --repair` removes damaged caches, and the next run "
            "that uses one rebuilds it"
        )
        removed = sum(report["removed"] for report in reports)
        repaired = f" ({removed} removed)" if args.repair else ""
        print(f"{_plural(len(reports), 'cache')} verified, {damaged} damaged{repaired}{hint}")
    else:
        print(f"{_plural(len(reports), 'cache')} verified, all intact")
    return EXIT_PROBLEMS if damaged else EXIT_OK


def _confirm(question: str, details: list[str]) -> bool:
    """Ask on the terminal (prompts go to stderr, so stdout stays clean for --json)."""
    for line in details:
        print(line, file=sys.stderr)
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline().strip().lower()
    return answer in {"y", "yes"}


def _stdin_is_terminal() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def _clear(args: argparse.Namespace, cache_dir: Path) -> int:
    if args.all == bool(args.names):
        raise UsageError("name the caches to clear, or give --all (not both)")
    entries = scan(cache_dir)
    targets = entries if args.all else _resolve(entries, args.names)
    if targets and not args.yes and _stdin_is_terminal():
        size = format_size(sum(entry.size for entry in targets))
        question = f"Remove {_plural(len(targets), 'cache')} ({size}) from {cache_dir}?"
        details = [
            f"  {entry.name} ({entry.state}, {format_size(entry.size)})" for entry in targets
        ]
        if not _confirm(question, details):
            print("nothing removed", file=sys.stderr)
            return EXIT_PROBLEMS
    removed: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    lines: list[str] = []
    freed = 0
    for entry in targets:
        removal = remove(cache_dir, entry, respect_leases=False)
        if not removal.removed:
            skipped.append(_entry_json(entry) | {"reason": removal.reason})
            lines.append(f"skipped {entry.name}: {removal.reason}")
            continue
        freed += entry.size
        removed.append(_entry_json(entry))
        what = format_size(entry.size)
        if entry.state != PUBLISHED:
            what = f"{entry.state}, {what}"
        note = "; a running process has it open and keeps reading it" if entry.in_use else ""
        lines.append(f"removed {entry.name} ({what}){note}")
    trash = empty_trash(cache_dir) if args.all else 0
    if trash:
        lines.append(f"removed what interrupted removals left in .trash ({format_size(trash)})")
    freed += trash
    if args.json:
        _print_json(
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


def _prune(args: argparse.Namespace, cache_dir: Path) -> int:
    if args.max_size is None and args.older_than is None:
        raise UsageError("give --max-size, --older-than, or both")
    entries = scan(cache_dir)
    total = sum(entry.size for entry in entries)
    cutoff = None if args.older_than is None else datetime.now(timezone.utc) - args.older_than
    oldest = datetime.min.replace(tzinfo=timezone.utc)
    candidates = sorted(
        (entry for entry in entries if entry.state != BUILDING),
        key=lambda entry: (entry.last_used or oldest, entry.name),
    )
    verb = "would remove" if args.dry_run else "removed"
    removed: list[dict[str, Any]] = []
    kept: list[dict[str, Any]] = []
    lines: list[str] = []
    for entry in candidates:
        stale = cutoff is not None and (entry.last_used is None or entry.last_used < cutoff)
        over = args.max_size is not None and total > args.max_size
        if not (stale or over):
            continue
        described = f"{entry.name} ({format_size(entry.size)}, last used {_local(entry.last_used)})"
        if args.dry_run:
            reason = "in use by a running process" if entry.in_use else None
        else:
            reason = remove(cache_dir, entry, respect_leases=True).reason
        if reason is not None:
            kept.append(_entry_json(entry) | {"reason": reason})
            lines.append(f"kept {described}: {reason}")
            continue
        total -= entry.size
        removed.append(_entry_json(entry))
        lines.append(f"{verb} {described}")
    freed = sum(entry["bytes"] for entry in removed)
    remaining = len(entries) - len(removed)
    over_limit = args.max_size is not None and total > args.max_size
    if args.json:
        _print_json(
            {
                "cache_dir": str(cache_dir),
                "dry_run": args.dry_run,
                "removed": removed,
                "kept": kept,
                "freed_bytes": freed,
                "remaining_bytes": total,
                "max_size_reached": not over_limit,
            }
        )
        return EXIT_PROBLEMS if over_limit else EXIT_OK
    for line in lines:
        print(line)
    rest = f"{_plural(remaining, 'cache')} ({format_size(total)}) remain"
    if removed or kept:
        print(f"{'would free' if args.dry_run else 'freed'} {format_size(freed)}; {rest}")
    else:
        print(f"nothing to prune; {rest}")
    if over_limit:
        limit = format_size(args.max_size)
        print(f"still over --max-size {limit}: the rest is in use or being built")
        return EXIT_PROBLEMS
    return EXIT_OK


# --- the parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``shardcache`` (the default cache directory read now)."""
    default_dir = resolve_cache_dir(None)
    fallback = platformdirs.user_cache_dir("shardcache")
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: the options work before and after the subcommand without one resetting the other.
    common.add_argument(
        "--cache-dir",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="DIR",
        help=f"the cache directory (default: ${ENVIRONMENT_VARIABLE}, else {fallback})",
    )
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print one JSON document (a stable schema) instead of text",
    )
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="shardcache",
        description="Manage shardcache's disk caches: list, inspect, verify, clear and prune.",
        epilog=f"current cache directory: {default_dir}\n\n{EXIT_STATUS_HELP}",
        formatter_class=formatter,
        parents=[common],
    )
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    commands.required = True

    def command(name: str, summary: str, description: str = "") -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=summary,
            description=f"{summary}\n\n{description}".strip(),
            epilog=EXIT_STATUS_HELP,
            formatter_class=formatter,
            parents=[common],
        )

    listing = command(
        "list",
        "List every cache: name, samples, size, state, creation and last use.",
        "States: published (ready), damaged (fails its checks), building (a live process\n"
        "holds its build lock), stale staging (an interrupted build; the next build of the\n"
        "same data resumes it). 'in use': a live process has the cache open.",
    )
    listing.set_defaults(handler=_list)

    info = command(
        "info",
        "Show a cache's manifest: key inputs, shards, sizes, label counts, last use.",
    )
    info.add_argument("name", metavar="NAME", help=NAME_HELP)
    info.set_defaults(handler=_info)

    verify = command(
        "verify",
        "Check every shard in full: its header and its xxh3-128 checksum.",
        "Names every damaged file and exits with status 1 when one is found.\n"
        "A cache cannot be rebuilt from the command line: the raw data loader that made it\n"
        "cannot be re-created from its manifest. --repair removes damaged caches instead;\n"
        "the next run that uses one (prepare_data, or ensure_cache) rebuilds it.",
    )
    verify.add_argument("names", nargs="*", metavar="NAME", help=f"{NAME_HELP} (default: all)")
    verify.add_argument(
        "--repair", action="store_true", help="remove damaged caches so the next run rebuilds them"
    )
    verify.set_defaults(handler=_verify)

    clear = command(
        "clear",
        "Remove caches, and stale staging directories.",
        "Asks for confirmation on a terminal. A cache whose build is in progress is skipped.\n"
        "A process reading a removed cache keeps working: files are renamed away and\n"
        "unlinked, never truncated. --all also empties what interrupted removals left.",
    )
    clear.add_argument("names", nargs="*", metavar="NAME", help=NAME_HELP)
    clear.add_argument("--all", action="store_true", help="remove every cache")
    clear.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    clear.set_defaults(handler=_clear)

    prune = command(
        "prune",
        "Remove least-recently-used caches, never one that a live process has open.",
        "SIZE: bytes, or a number with a unit: K, M, G, T alone or with iB (KiB, GiB) are\n"
        "powers of 1024, with B alone (KB, GB) powers of 1000; e.g. 10G, 500MiB.\n"
        "DURATION: a number and a unit among s, m, h, d, w; e.g. 7d, 12h, 1d12h.\n"
        "Stale staging directories count too; builds in progress are left alone.",
    )
    prune.add_argument(
        "--max-size",
        type=parse_size,
        metavar="SIZE",
        help="remove caches, least recently used first, until all of them fit in SIZE",
    )
    prune.add_argument(
        "--older-than",
        type=parse_duration,
        metavar="DURATION",
        help="remove caches not used for DURATION",
    )
    prune.add_argument(
        "-n", "--dry-run", action="store_true", help="say what would be removed, remove nothing"
    )
    prune.set_defaults(handler=_prune)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``shardcache`` command with ``argv`` (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 success, 1 problems found, 2 usage error.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, or argparse's own usage error
        return done.code if isinstance(done.code, int) else EXIT_USAGE
    args.json = getattr(args, "json", False)
    cache_dir = resolve_cache_dir(getattr(args, "cache_dir", None))
    handler: Callable[[argparse.Namespace, Path], int] = args.handler
    try:
        return handler(args, cache_dir)
    except UsageError as error:
        print(f"{parser.prog} {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (ShardCacheError, OSError) as error:
        if isinstance(error, BrokenPipeError):  # `shardcache list | head`: not an error
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_PROBLEMS
        print(f"{parser.prog} {args.command}: error: {error}", file=sys.stderr)
        return EXIT_PROBLEMS
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
