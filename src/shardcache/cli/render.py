"""How the command line prints: aligned tables, local times, and the stable JSON schema."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from ..store.inventory import BUILDING, CacheEntry


def local_time(moment: datetime | None) -> str:
    """``2025-11-25 14:03`` in local time, or ``-``."""
    return moment.astimezone().strftime("%Y-%m-%d %H:%M") if moment else "-"


def iso_time(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC, to the second, or None."""
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds") if moment else None


def plural(count: int, noun: str) -> str:
    """``1 cache``, ``2 caches``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def state(entry: CacheEntry) -> str:
    """The entry's state, with ``, in use`` when a live process has it open."""
    return f"{entry.state}, in use" if entry.in_use else entry.state


def samples(entry: CacheEntry) -> str:
    """The sample count; ``done/total`` for a build in progress."""
    if entry.samples is None:
        return "-"
    if entry.state == BUILDING and entry.owner and isinstance(entry.owner.get("done"), int):
        return f"{entry.owner['done']}/{entry.samples}"
    return str(entry.samples)


def entry_json(entry: CacheEntry) -> dict[str, Any]:
    """One entry in the stable JSON schema shared by every subcommand."""
    return {
        "name": entry.name,
        "path": str(entry.path),
        "state": entry.state.replace(" ", "_"),
        "key": entry.key,
        "subset": entry.subset,
        "samples": entry.samples,
        "bytes": entry.size,
        "created": iso_time(entry.created),
        "last_used": iso_time(entry.last_used),
        "in_use": entry.in_use,
        "problem": entry.problem,
        "owner": entry.owner,
    }


def print_json(document: dict[str, Any]) -> None:
    """Print one JSON document on stdout."""
    print(json.dumps(document, indent=2))


def table(rows: Sequence[tuple[str, ...]], right: set[int]) -> list[str]:
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


def fields(pairs: Sequence[tuple[str, str]], indent: str = "  ") -> list[str]:
    """``name: value`` lines with the values aligned."""
    width = max(len(name) for name, _ in pairs) + 1
    return [f"{indent}{name + ':':<{width}} {value}" for name, value in pairs]
