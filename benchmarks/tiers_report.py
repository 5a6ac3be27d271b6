"""Render a `benchmarks.tiers` summary as markdown: what was measured, tables, targets."""

from __future__ import annotations

from typing import Any

from benchmarks import tiers_report_narrow
from benchmarks.tiers_format import num, size, table, tier_label, times
from benchmarks.tiers_plan import TIERS

BUSY_LOAD = 0.5
"""Load average per CPU above which the report warns that other work shared the machine."""


def _workers(parallel: int) -> str:
    return "in-process" if parallel < 0 else f"{parallel} workers"


def _intro(summary: dict[str, Any]) -> list[str]:
    """What was measured, on what machine, and a warning when the machine was busy."""
    params, machine = summary["params"], summary["machine"]
    dataset = params["dataset"]
    n, head = params["items"], params["headline_parallel"]
    channels = 1 if params["mode"] == "gray" else 3
    shape = f"[{channels}, {params['size']}, {params['size']}]"
    out = [
        "# shardcache: what each cache tier costs and gains",
        "",
        f"Command: `{params['command']}` ({params['wall_s']:.0f} s in all).",
        "",
        f"Data: N = {n} synthetic {params['mode']} {params['image_format'].upper()} images of "
        f"{params['size']}x{params['size']} (files at {dataset['compression']:.0%} of the raw "
        f"pixels, 70/30 classes), decoded to float32 {shape}: "
        f"{size(params['sample_bytes'])} per sample, {size(params['decoded_bytes'])} in all. "
        f"Batches of {params['batch_size']}, shuffled, through "
        f"`CachingDataModule.train_dataloader()`. Every figure is the median of "
        f"{params['repeats']} fresh processes; ratios are against the memory tier of the same run.",
        "",
        "Two disk rows: `disk` (narrow) is the default, which stores a float tensor as 8- or "
        "16-bit integers when that is exact (these 8-bit PNGs loaded as float32 / 255 are), "
        "and serves it bit for bit; `disk` (float32) is the same tier with `narrow=False`, "
        "storing the floats as loaded, in a cache directory of its own.",
        "",
        f"Machine: {machine['cpu']}, {machine['cpus_available']} CPUs, "
        f"{machine['memory_gib']} GiB RAM; Python {machine['python']}, torch {machine['torch']}; "
        f"load average {machine['load_average_before'][0]:.1f} before, "
        f"{machine['load_average_after'][0]:.1f} after (above 0 means other work shared the CPUs); "
        "torch intra-op threads per measured process: "
        + (
            f"{params['threads']} (`--threads`)."
            if params.get("threads")
            else f"torch's default ({machine['torch_threads']})."
        ),
        "",
        f"## Summary (parallel={head}: {_workers(head)})",
        "",
    ]
    busiest = max(machine["load_average_before"][0], machine["load_average_after"][0])
    if busiest > BUSY_LOAD * (machine["cpus_available"] or 1):
        out += [
            f"> **Noisy run**: the load average reached {busiest:.1f} on "
            f"{machine['cpus_available']} CPUs, so other processes competed for the CPUs; "
            "ratios from one run are more trustworthy than absolute figures, and those in "
            "the tens of milliseconds are the least.",
            "",
        ]
    return out


def _summary(summary: dict[str, Any]) -> list[str]:
    """The per-tier table at the headline ``parallel`` setting, and ratios to memory."""
    head = summary["params"]["headline_parallel"]
    rows = []
    for tier in TIERS:
        t = summary["tiers"][tier]
        rows.append(
            [
                tier_label(tier),
                num(t["build_s"]),
                num(t["warm_samples_per_s"]),
                num(t["cold_samples_per_s"]),
                num(t["first_batch_s"], 3),
                str(t["decodes_first_run"]),
                str(t["decodes_second_run"]),
                num(t["rss_mb"]),
                num(t["pss_mb"]),
                num(summary["by_parallel"][str(head)]["tiers"][tier]["data_copies"]),
                size(t["cache_bytes"]),
            ]
        )
    out = table(
        [
            "tier",
            "build / first epoch (s)",
            "warm samples/s",
            "cold samples/s",
            "first batch (s)",
            "decodes, 1st run",
            "decodes, 2nd run",
            "RSS (MiB)",
            "PSS (MiB)",
            "data copies (PSS)",
            "cache on disk",
        ],
        rows,
    )
    out += [
        "- *build / first epoch*: `none` one epoch; `memory` the load in `setup()`; `disk` "
        "`prepare_data()` into an empty cache directory.",
        "- *warm samples/s*: epochs after the first, in a process whose cache is ready "
        "(the page cache holds the files).",
        "- *cold samples/s*: disk tiers only: an epoch right after every shard page was "
        "dropped from the page cache (see the narrow section below).",
        "- *first batch*: from creating the DataModule to the first batch, in a fresh process "
        "(for `memory` this includes the load; for `disk` the cache already exists).",
        "- *RSS/PSS*: the main process plus its DataLoader workers after the epochs; PSS "
        "divides shared pages among the processes that map them, so it adds up honestly. "
        "*data copies*: PSS above the main process's PSS before it opened the DataModule "
        "(the interpreter, torch, Lightning), divided by the decoded size of the split.",
        "",
        "Ratios against the memory tier:",
        "",
    ]
    rows = [
        [tier_label(tier)]
        + [
            times(summary["ratios"][tier][key])
            for key in ("build_s", "warm_samples_per_s", "first_batch_s", "pss_mb")
        ]
        for tier in summary["ratios"]
    ]
    out += table(["tier", "build", "warm throughput", "first batch", "PSS"], rows)
    return out


def _targets(summary: dict[str, Any]) -> list[str]:
    """The design targets as PASS/MISS lines."""
    out = ["## Targets", ""]
    for target in summary["targets"]:
        verdict = {True: "PASS", False: "MISS", None: "n/a"}[target["pass"]]
        goal = target.get("goal")
        wanted = f"target {target['compare']} {target['limit']} {target['unit']}"
        if goal is not None:
            wanted += f", goal {goal} {target['unit']}"
        out.append(
            f"- **{verdict}** {target['name']}: {num(target['value'], 2)} {target['unit']} "
            f"({wanted})"
        )
    out += [
        "",
        "Ratios are taken at every `parallel` setting and the worst one counts.",
        "",
    ]
    return out


def _by_parallel(summary: dict[str, Any]) -> list[str]:
    """Every tier's figures at every ``parallel`` setting."""
    out = ["## By `parallel` setting", ""]
    rows = []
    for parallel, block in summary["by_parallel"].items():
        for tier in TIERS:
            t = block["tiers"][tier]
            rows.append(
                [
                    parallel,
                    tier_label(tier),
                    num(t["build_s"]),
                    num(t["first_epoch_samples_per_s"]),
                    num(t["warm_samples_per_s"]),
                    num(t["first_batch_s"], 3),
                    str(t["processes"]),
                    num(t["rss_mb"]),
                    num(t["pss_mb"]),
                    num(t["uss_mb"]),
                    num(t["cache_pss_mb"]),
                    num(t["data_copies"], 2),
                ]
            )
    out += table(
        [
            "parallel",
            "tier",
            "build (s)",
            "1st epoch samples/s",
            "warm samples/s",
            "first batch (s)",
            "processes",
            "RSS (MiB)",
            "PSS (MiB)",
            "USS (MiB)",
            "shard maps PSS (MiB)",
            "data copies (PSS)",
        ],
        rows,
    )
    out += [
        "*1st epoch*: the first epoch of a fresh process (for `disk` it maps the shards and "
        "faults their pages in). *shard maps PSS*: the part of PSS that is the disk tier's "
        "mapped shard files, i.e. its share of the page cache. *data copies*: PSS above the "
        "main process's PSS before opening the DataModule, divided by the decoded size of "
        "the split (workers add their own interpreter pages).",
        "",
    ]
    return out


def _first_batch(summary: dict[str, Any]) -> list[str]:
    """Time to first batch on a warm disk cache, N against SCALE x N items."""
    n, scale = summary["params"]["items"], summary["params"]["scale"]
    out = [
        f"## Time to first batch on a warm disk cache: N = {n} vs {scale}N = {scale * n} items",
        "",
        f"The {scale}N split lists every image {scale} times under distinct items, so it has "
        "its own cache of that size.",
        "",
    ]
    rows = [
        [
            parallel,
            num(block["first_batch"]["N"], 3),
            num(block["first_batch"][f"{scale}N"], 3),
            num(block["first_batch"]["ratio"], 2) + "x",
        ]
        for parallel, block in summary["by_parallel"].items()
    ]
    out += table(["parallel", "N (s)", f"{scale}N (s)", "ratio"], rows)
    return out


def _ddp(summary: dict[str, Any]) -> list[str]:
    """Two DDP ranks' decodes and memory (empty without DDP runs)."""
    if not summary["ddp"]:
        return []
    out = [
        "## DDP: 2 ranks on CPU (gloo), first run",
        "",
        "Rank 0 runs `prepare_data()`, both ranks `setup()` and iterate a whole epoch "
        "in-process; memory is taken while both ranks are alive.",
        "",
    ]
    rows = [
        [
            f"`{tier}`",
            str(d["decodes_total"]),
            num(d["rss_sum_mb"]),
            num(d["pss_sum_mb"]),
            num(d["cache_pss_sum_mb"]) if tier == "disk" else "n/a",
            num(d["data_copies"], 2),
            num(d["seconds"]),
        ]
        for tier, d in summary["ddp"].items()
    ]
    out += table(
        [
            "tier",
            "decodes (both ranks)",
            "RSS sum (MiB)",
            "PSS sum (MiB)",
            "shard maps PSS sum (MiB)",
            "data copies (PSS)",
            "slowest rank (s)",
        ],
        rows,
    )
    return out


def _references(summary: dict[str, Any]) -> list[str]:
    """The physical references: memcpy, page cache, mmap, per-sample overhead."""
    r = summary["references"]
    out = [
        "## Physical references on this machine",
        "",
    ]
    out += table(
        [
            "memcpy, samples from 256 MiB",
            "memcpy, one hot sample",
            "page cache, sequential read",
            "mmap, first touch",
            "mmap, warm copy",
            "`CacheDataset[i]`, float32 cache",
            "bare mmap view",
        ],
        [
            [
                f"{r['memcpy_gb_s']:.1f} GB/s",
                f"{r['memcpy_hot_gb_s']:.1f} GB/s",
                f"{r['page_cache_read_gb_s']:.1f} GB/s",
                f"{r['mmap_first_touch_gb_s']:.1f} GB/s",
                f"{r['mmap_warm_copy_gb_s']:.1f} GB/s",
                f"{r['getitem_us']:.1f} us",
                f"{r['bare_view_us']:.1f} us",
            ]
        ],
    )
    out += [
        "*memcpy*: `copy_` of sample-sized tensors into a preallocated one, one thread: "
        "cycling through a 256 MiB pool (main memory, the reference), or the same sample "
        "again (CPU cache). *page cache*: `readv` "
        "of the shard files into an 8 MiB buffer. *mmap*: copying every sample out of the "
        "disk tier's views, in a fresh process (first touch faults pages in) and again. "
        "All on the float32 cache (`narrow=False`), whose samples are views of the mapping "
        "(a narrow sample read through `CacheDataset[i]` is widened into a new tensor).",
        "",
    ]
    return out


def markdown(summary: dict[str, Any]) -> str:
    """The report: what was measured, the tables, and the targets as PASS/MISS lines."""
    sections = (
        _intro,
        _summary,
        _targets,
        _by_parallel,
        tiers_report_narrow.section,
        _first_batch,
        _ddp,
        _references,
    )
    return "\n".join(line for section in sections for line in section(summary))
