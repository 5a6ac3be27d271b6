"""The report's section on the disk tier's two storages: narrow against float32."""

from __future__ import annotations

from typing import Any

from benchmarks.tiers_format import num, size, table, tier_label, times


def _narrow_count(storage: dict[str, int] | None) -> str:
    if not storage:
        return "n/a"
    return f"{storage.get('narrow_tensors', 0):,} of {storage.get('tensors', 0):,}"


def section(summary: dict[str, Any]) -> list[str]:
    """The two disk rows side by side: throughput warm and cold, build, bytes; digests."""
    out = [
        "## Narrow against float32 storage (the disk tier)",
        "",
        "*cold*: in the process that built the cache, each cold epoch times a new "
        "DataModule's `setup()` and one epoch, right after `posix_fadvise(POSIX_FADV_DONTNEED)` "
        "on every shard file (no root needed); `mincore` then counts the shard pages still "
        "cached (*left after drop*, the worst epoch: 0% means every page came from the disk). "
        "With workers, a cold epoch includes starting them. *cold first batch*: from "
        "`setup()` to the first batch. *read MB/s*: a sequential `readv` of the same "
        "shard files after a drop: the disk's cold bandwidth for them. *major faults*: "
        "page faults that waited for the disk in a cold epoch, workers' included (the "
        "kernel reads ahead around each one).",
        "",
    ]
    rows = []
    for parallel, block in summary["by_parallel"].items():
        narrow, wide = block["tiers"]["disk"], block["tiers"]["disk-float32"]
        ratios = block["narrow_vs_float32"]
        lefts = [t["cold_resident_after_drop"] for t in (narrow, wide)]
        left = max((value for value in lefts if value is not None), default=None)
        rows.append(
            [
                parallel,
                num(narrow["warm_samples_per_s"]),
                num(wide["warm_samples_per_s"]),
                times(ratios["warm_samples_per_s"]),
                num(narrow["cold_samples_per_s"]),
                num(wide["cold_samples_per_s"]),
                times(ratios["cold_samples_per_s"]),
                f"{num(narrow['cold_first_batch_s'], 2)} / {num(wide['cold_first_batch_s'], 2)}",
                f"{num(narrow['cold_read_mb_s'])} / {num(wide['cold_read_mb_s'])}",
                f"{num(narrow['cold_major_faults'], 0)} / {num(wide['cold_major_faults'], 0)}",
                "n/a" if left is None else f"{left:.1%}",
            ]
        )
    out += table(
        [
            "parallel",
            "warm samples/s, narrow",
            "warm, float32",
            "ratio",
            "cold samples/s, narrow",
            "cold, float32",
            "ratio",
            "cold first batch s (narrow / float32)",
            "cold read MB/s (narrow / float32)",
            "major faults per cold epoch (narrow / float32)",
            "pages left after drop",
        ],
        rows,
    )
    rows = []
    for parallel, block in summary["by_parallel"].items():
        narrow, wide = block["tiers"]["disk"], block["tiers"]["disk-float32"]
        ratios = block["narrow_vs_float32"]
        rows.append(
            [
                parallel,
                num(narrow["build_s"]),
                num(wide["build_s"]),
                times(ratios["build_s"]),
                size(narrow["cache_bytes"]),
                size(wide["cache_bytes"]),
                times(ratios["cache_bytes"]),
                _narrow_count(narrow["storage"]),
            ]
        )
    out += table(
        [
            "parallel",
            "build (s), narrow",
            "build, float32",
            "ratio",
            "cache on disk, narrow",
            "float32",
            "ratio",
            "tensors stored narrow",
        ],
        rows,
    )
    identical = summary["served_identical"]
    checked = ", ".join(tier_label(tier) for tier in identical["digests"])
    if identical["identical"]:
        verdict = f"bit-identical to `none`'s ({checked})"
    elif identical["reference"] is None:
        verdict = "not compared (no digest of tier `none`)"
    else:
        differing = ", ".join(tier_label(tier) for tier in identical["differing"])
        verdict = f"**different** from `none`'s for {differing}"
    out += [
        "Served samples (every sample of an unshuffled epoch through `train_dataloader`'s "
        f"collator, at every `parallel`, hashed in order): {verdict}.",
        "",
    ]
    return out
