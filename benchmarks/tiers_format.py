"""Cells of the `benchmarks.tiers` report: numbers, sizes, ratios, tier names, tables."""

from __future__ import annotations

from collections.abc import Sequence

from benchmarks.harness import markdown_table
from benchmarks.tiers_plan import LABELS


def num(value: float | None, digits: int = 2) -> str:
    """``value`` with ``digits`` decimals, thousands separated from 100 on; n/a if None."""
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def size(nbytes: float | None) -> str:
    """Bytes in B, KiB, MiB or GiB."""
    if not nbytes:
        return "0"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} GiB"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table and the blank line after it."""
    return [markdown_table(header, rows), ""]


def tier_label(tier: str) -> str:
    """A tier row's name in tables: `` `disk` (float32)`` for ``disk-float32``."""
    name, _, storage = LABELS.get(tier, tier).partition(" ")
    return f"`{name}` {storage}".rstrip()


def times(value: float | None) -> str:
    """A ratio: ``0.25x``."""
    return "n/a" if value is None else f"{value:.2f}x"
