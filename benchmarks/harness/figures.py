"""What every benchmark computes and shows the same way.

Medians that skip missing values, rates over timed rounds, ratios against a reference,
pass/miss against a target, and markdown or plain-text tables. Nothing here (nor in
`benchmarks.harness.children`) imports torch: the parent processes stay light.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

# ---- figures ---------------------------------------------------------------------------------


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values present (``None`` when there are none)."""
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def timed_rates(
    action: Callable[[], object],
    *,
    amount: float,
    rounds: int = 5,
    min_seconds: float = 0.2,
    warmup: bool = True,
) -> list[float]:
    """``amount`` per second of ``action``, once per round of at least ``min_seconds``.

    Each round repeats ``action`` until ``min_seconds`` have passed (at least once), so a
    fast action is not timed at the clock's resolution; ``warmup`` calls it once before.
    """
    if warmup:
        action()
    rates = []
    for _ in range(rounds):
        count, mark = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - mark) < min_seconds or count == 0:
            action()
            count += 1
        rates.append(amount * count / elapsed)
    return rates


def ratio(value: float | None, reference: float | None) -> float | None:
    """``value / reference``, or ``None`` when either is missing (or the reference is 0)."""
    if value is None or not reference:
        return None
    return value / reference


def meets(value: float | None, limit: float, *, at_most: bool = False) -> bool | None:
    """Whether ``value`` meets a target (``<= limit`` or ``>= limit``); ``None`` if missing."""
    if value is None:
        return None
    return value <= limit if at_most else value >= limit


def tree_bytes(path: Path) -> int:
    """Bytes of the files under ``path``."""
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


def available_cpus() -> int:
    """CPUs this process may run on (its affinity), else the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# ---- tables ----------------------------------------------------------------------------------


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str = "") -> str:
    """A markdown table; ``align`` has one ``l`` or ``r`` per column (default: left)."""
    marks = [("---:" if align[i : i + 1] == "r" else "---") for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    """A plain-text table in aligned columns; ``align`` as for `markdown_table`."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(width) if align[i : i + 1] == "r" else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows)])
