"""The design targets of `benchmarks.tiers`: each a PASS/MISS line from the summary.

Ratios are taken at every ``parallel`` setting and the worst one counts.
"""

from __future__ import annotations

from typing import Any

from benchmarks.harness import meets, ratio
from benchmarks.tiers_plan import DISK_TIERS, LABELS

FLAT_FIRST_BATCH = 1.5
"""Time to first batch counts as flat when 4N takes at most this many times N's."""


def _worst(values: list[float | None], *, at_most: bool) -> float | None:
    present = [value for value in values if value is not None]
    if not present:
        return None
    return max(present) if at_most else min(present)


def targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The design's performance targets, each a pass/miss line (the worst ``parallel`` counts)."""
    blocks = list(summary["by_parallel"].values())
    lines = []

    def line(
        name: str,
        value: float | None,
        limit: float,
        at_most: bool,
        unit: str,
        goal: float | None = None,
    ) -> None:
        lines.append(
            {
                "name": name,
                "value": value,
                "limit": limit,
                "compare": "<=" if at_most else ">=",
                "unit": unit,
                "goal": goal,
                "pass": meets(value, limit, at_most=at_most),
            }
        )

    for tier in DISK_TIERS:
        label = LABELS[tier]
        warm = _worst([p["ratios"][tier]["warm_samples_per_s"] for p in blocks], at_most=False)
        line(f"{label} warm throughput vs memory", warm, 0.9, False, "x")
        build = _worst([p["ratios"][tier]["build_s"] for p in blocks], at_most=True)
        line(f"{label} build time vs memory load", build, 1.1, True, "x")
    narrow = [p["narrow_vs_float32"] for p in blocks]
    size = _worst([n["cache_bytes"] for n in narrow], at_most=True)
    line("disk cache bytes, narrow vs float32", size, 0.3, True, "x")
    warm = _worst([n["warm_samples_per_s"] for n in narrow], at_most=False)
    line("disk warm throughput, narrow vs float32", warm, 1.0, False, "x", goal=1.3)
    cold = _worst([n["cold_samples_per_s"] for n in narrow], at_most=False)
    line("disk cold throughput, narrow vs float32", cold, 2.5, False, "x")
    identical = summary["served_identical"]
    differing = None if identical["reference"] is None else len(identical["differing"])
    line("tiers whose served samples differ from tier none", differing, 0, True, "tiers")
    scale = summary["params"]["scale"]
    flat = _worst([p["first_batch"]["ratio"] for p in blocks], at_most=True)
    line(f"time to first batch, {scale}N vs N (flat)", flat, FLAT_FIRST_BATCH, True, "x")
    if "disk" in summary["ddp"]:
        # The PSS of the shard mappings summed over ranks: the page-cache pages the job
        # holds, without each rank's own allocations (shown in the DDP table).
        copies = summary["ddp"]["disk"]["cache_copies"]
        name = "DDP 2 ranks, disk tier shard pages resident (sum of PSS)"
        line(name, copies, 1.1, True, "copies")
        decodes = summary["ddp"]["disk"]["decodes_total"]
        items = summary["params"]["items"]
        line("DDP 2 ranks, disk tier decodes per item", decodes / items, 1.0, True, "per item")
    references = summary["references"]
    bandwidth = ratio(references["page_cache_read_gb_s"], references["memcpy_gb_s"])
    line("page-cache read bandwidth vs memcpy", bandwidth, 0.5, False, "x")
    overhead = references["getitem_us"] - references["bare_view_us"]
    name = "disk (float32) __getitem__ overhead over a bare mmap view"
    line(name, overhead, 5.0, True, "us")
    return lines
