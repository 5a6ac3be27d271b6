"""From the raw results of `benchmarks.tiers_plan` to ``summary.json``: medians, ratios, targets.

Figures are medians over the repeats (`benchmarks.harness.median`); ratios are taken
against the memory tier of the same run, at every ``parallel`` setting, and the worst
``parallel`` counts for each design target (`benchmarks.tiers_targets`). The two disk rows
are also compared with each
other (narrow against float32 storage: warm, cold, build, bytes on disk), and every tier's
served samples with tier ``none``'s (digests).
"""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.harness import available_cpus, median, ratio
from benchmarks.tiers_plan import DISK_TIERS, TIERS
from benchmarks.tiers_targets import targets

if TYPE_CHECKING:
    from benchmarks.synthetic import SyntheticDataset
    from benchmarks.tiers_plan import Options

MB = 1 << 20
RATIO_KEYS = ("build_s", "warm_samples_per_s", "first_batch_s", "pss_mb")
"""Figures every tier is compared on with the memory tier."""
NARROW_KEYS = (
    "build_s",
    "warm_samples_per_s",
    "first_epoch_samples_per_s",
    "cold_samples_per_s",
    "first_batch_s",
    "cache_bytes",
)
"""Figures the narrow disk tier is compared on with the float32 one."""


def tier_figures(options: Options, runs: list[dict[str, Any]], tier: str, parallel: int) -> Any:
    """Medians of one tier at one ``parallel`` setting."""
    mine = [r["result"] for r in runs if r["tier"] == tier and r["parallel"] == parallel]
    served = [r for r in mine if "epoch_s" in r and "memory" in r]
    builds = [r for r in mine if "prepare_s" in r]
    n = options.items
    if tier == "none":
        build = [r["setup_s"] + r["epoch_s"][0] for r in served]
    elif tier == "memory":
        build = [r["setup_s"] for r in served]
    else:
        build = [r["prepare_s"] for r in builds]
    warm = [n / statistics.median(r["epoch_s"][1:]) for r in served if len(r["epoch_s"]) > 1]
    totals = [r["memory"]["total"] for r in served]
    figures: dict[str, Any] = {
        "build_s": median(build),
        "warm_samples_per_s": median(warm),
        "first_epoch_samples_per_s": median([n / r["epoch_s"][0] for r in served]),
        "first_batch_s": median([r["first_batch_s"] for r in served]),
        "rss_mb": median([t["rss_mb"] for t in totals]),
        "pss_mb": median([t["pss_mb"] for t in totals]),
        "uss_mb": median([t["uss_mb"] for t in totals]),
        "cache_pss_mb": median([t.get("cache_pss_mb") for t in totals]),
        "main_rss_mb": median([r["memory"]["processes"]["main"]["rss_mb"] for r in served]),
        "baseline_pss_mb": median([r["baseline"]["pss_mb"] for r in served]),
        "processes": max((len(r["memory"]["processes"]) for r in served), default=0),
        "samples_build": build,
        "samples_warm": warm,
    }
    if tier in DISK_TIERS:
        figures["cache_bytes"] = builds[0]["cache_bytes"] if builds else None
        figures["storage"] = builds[0].get("storage") if builds else None
        figures.update(cold_figures(builds))
    if tier == "disk":
        figures[f"first_batch_{options.scale}N_s"] = median(
            [r["first_batch_s"] for r in mine if r.get("items") == options.scale * n]
        )
    return figures


def cold_figures(builds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the cold epochs of a disk tier's builds, and of the cold read bandwidth.

    ``cold_resident_after_drop`` is the worst fraction of shard pages still cached after a
    drop: 0 means every cold epoch started from the disk.
    """
    colds = [r["cold"] for r in builds if "cold" in r]
    epochs = [epoch for cold in colds for epoch in cold["epochs"]]
    return {
        "cold_samples_per_s": median([e["samples_per_s"] for e in epochs]),
        "cold_after_first_batch_samples_per_s": median(
            [e["after_first_batch_samples_per_s"] for e in epochs]
        ),
        "cold_first_batch_s": median([e["first_batch_s"] for e in epochs]),
        "cold_major_faults": median([e.get("major_faults") for e in epochs]),
        "cold_read_mb_s": median([cold["read"]["mb_s"] for cold in colds]),
        "cold_resident_after_drop": max(
            [e["resident_after"] for e in epochs]
            + [cold["read"]["resident_after_drop"] for cold in colds],
            default=None,
        ),
        "samples_cold": [e["samples_per_s"] for e in epochs],
    }


def decode_counts(runs: list[dict[str, Any]], tier: str) -> tuple[int | None, int | None]:
    """Decodes of the tier's first run and of the next fresh process (its second run)."""
    if tier in DISK_TIERS:
        builds = [r["result"] for r in runs if r["kind"] == "build" and r["tier"] == tier]
        warm = [r["result"] for r in runs if r["kind"] == "run" and r["tier"] == tier]
        return builds[0]["decodes_prepare"], warm[0]["decodes_first_epoch"]
    served = [r["result"] for r in runs if r["tier"] == tier and r["kind"] in {"run", "second_run"}]
    counts = [r["decodes_first_epoch"] for r in served]
    return counts[0], counts[1] if len(counts) > 1 else None


def ddp_figures(
    ranks: list[dict[str, Any]], data_bytes: int, cache_bytes: int | None
) -> dict[str, Any]:
    """Sums over the ranks; ``cache_copies``: shard maps PSS over the cache's bytes on disk."""
    pss = sum(rank["memory"]["pss_mb"] for rank in ranks)
    baseline = sum(rank["baseline"]["pss_mb"] for rank in ranks)
    cache_pss = sum(rank["memory"].get("cache_pss_mb", 0.0) for rank in ranks)
    return {
        "ranks": ranks,
        "rss_sum_mb": sum(rank["memory"]["rss_mb"] for rank in ranks),
        "pss_sum_mb": pss,
        "uss_sum_mb": sum(rank["memory"]["uss_mb"] for rank in ranks),
        "baseline_pss_sum_mb": baseline,
        "cache_pss_sum_mb": cache_pss,
        "data_copies": (pss - baseline) * MB / data_bytes,
        "cache_copies": cache_pss * MB / cache_bytes if cache_bytes else None,
        "decodes_total": ranks[0]["decodes_total"],
        "seconds": max(rank["epoch_s"] for rank in ranks),
    }


def machine_info() -> dict[str, Any]:
    import lightning
    import psutil
    import torch
    import torchvision

    import shardcache

    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "cpus_available": available_cpus(),
        "memory_gib": round(psutil.virtual_memory().total / (1 << 30), 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torchvision": torchvision.__version__,
        "lightning": lightning.__version__,
        "shardcache": shardcache.__version__,
    }


def by_parallel(options: Options, runs: list[dict[str, Any]], data_bytes: int) -> dict[str, Any]:
    """Per ``parallel`` setting: each tier's figures, ratios to memory, first batch N vs 4N."""
    blocks: dict[str, Any] = {}
    for parallel in options.parallels:
        tiers = {tier: tier_figures(options, runs, tier, parallel) for tier in TIERS}
        for figures in tiers.values():
            pss, base = figures["pss_mb"], figures["baseline_pss_mb"]
            figures["data_copies"] = (
                None if pss is None or base is None else (pss - base) * MB / data_bytes
            )
        memory = tiers["memory"]
        ratios = {
            tier: {key: ratio(tiers[tier][key], memory[key]) for key in RATIO_KEYS}
            for tier in TIERS
            if tier != "memory"
        }
        narrow, wide = tiers["disk"], tiers["disk-float32"]
        narrow_ratios = {key: ratio(narrow[key], wide[key]) for key in NARROW_KEYS}
        disk = tiers["disk"]
        big = f"{options.scale}N"
        first_batch = {"N": disk["first_batch_s"], big: disk[f"first_batch_{big}_s"]}
        first_batch["ratio"] = ratio(first_batch[big], first_batch["N"])
        blocks[str(parallel)] = {
            "num_workers": max(parallel, 0),
            "tiers": tiers,
            "ratios": ratios,
            "narrow_vs_float32": narrow_ratios,
            "first_batch": first_batch,
        }
    return blocks


def summary_tiers(runs: list[dict[str, Any]], head: dict[str, Any]) -> dict[str, Any]:
    """The per-tier summary at the headline ``parallel`` setting, with decode counts."""
    result = {}
    for tier in TIERS:
        figures = head["tiers"][tier]
        first, second = decode_counts(runs, tier)
        result[tier] = {
            "build_s": figures["build_s"],
            "warm_samples_per_s": figures["warm_samples_per_s"],
            "first_batch_s": figures["first_batch_s"],
            "decodes_first_run": first,
            "decodes_second_run": second,
            "rss_mb": figures["rss_mb"],
            "pss_mb": figures["pss_mb"],
            "cache_bytes": figures.get("cache_bytes") or 0,
            "cold_samples_per_s": figures.get("cold_samples_per_s"),
            "cold_read_mb_s": figures.get("cold_read_mb_s"),
        }
    return result


def served_identical(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each tier's digest of its served samples (per ``parallel``), against tier ``none``'s."""
    digests: dict[str, dict[str, str]] = {}
    for run in runs:
        if "digest" in run["result"]:
            digests.setdefault(run["tier"], {})[str(run["parallel"])] = run["result"]["digest"]
    reference = next(iter(digests.get("none", {}).values()), None)
    differing = sorted(
        tier
        for tier, values in digests.items()
        if reference is None or any(value != reference for value in values.values())
    )
    return {
        "reference": reference,
        "digests": digests,
        "differing": differing,
        "identical": bool(digests) and reference is not None and not differing,
    }


def summarise(
    options: Options, dataset: SyntheticDataset, raw: dict[str, Any], extra: dict[str, Any]
) -> dict[str, Any]:
    """The summary.json document (see the module docstring of `benchmarks.tiers_report`)."""
    runs = raw["runs"]
    sample_bytes = next(r["result"]["sample_bytes"] for r in runs if r["kind"] == "run")
    data_bytes = options.items * sample_bytes
    blocks = by_parallel(options, runs, data_bytes)
    head = blocks[str(options.headline_parallel)]
    summary = {
        "tiers": summary_tiers(runs, head),
        "ratios": head["ratios"],
        "narrow_vs_float32": head["narrow_vs_float32"],
        "served_identical": served_identical(runs),
        "machine": {**machine_info(), **extra["machine"]},
        "params": {
            "command": extra["command"],
            "quick": options.quick,
            "items": options.items,
            "size": options.size,
            "mode": options.mode,
            "image_format": options.image_format,
            "repeats": options.repeats,
            "parallels": list(options.parallels),
            "headline_parallel": options.headline_parallel,
            "batch_size": options.batch_size,
            "warm_epochs": options.warm_epochs,
            "scale": options.scale,
            "cold_epochs": options.cold_epochs,
            "threads": options.threads,
            "sample_bytes": sample_bytes,
            "decoded_bytes": data_bytes,
            "dataset": {"root": str(dataset.root), **dataset.info},
            "wall_s": extra["wall_s"],
        },
        "by_parallel": blocks,
        "ddp": {
            tier: ddp_figures(ranks, data_bytes, head["tiers"][tier].get("cache_bytes"))
            for tier, ranks in raw["ddp"].items()
        },
        "references": raw["references"],
        "runs": runs,
    }
    summary["targets"] = targets(summary)
    return summary
