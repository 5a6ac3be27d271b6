"""The `benchmarks.tiers` summary as a PNG: build time, warm throughput and memory by tier."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.tiers_plan import TIERS


def _memory_series(summary: dict[str, Any]) -> tuple[list[list[float]], list[str]]:
    """PSS above the interpreter's own, per tier: one series per ``parallel``, and DDP's."""
    series, labels = [], []
    for parallel, block in summary["by_parallel"].items():
        tiers = block["tiers"]
        series.append(
            [(tiers[t]["pss_mb"] or 0) - (tiers[t]["baseline_pss_mb"] or 0) for t in TIERS]
        )
        workers = int(parallel)
        labels.append(
            "one process" if workers < 0 else f"one process + {workers} workers (their own too)"
        )
    if summary["ddp"]:
        ddp = summary["ddp"]
        series.append(
            [ddp[t]["pss_sum_mb"] - ddp[t]["baseline_pss_sum_mb"] if t in ddp else 0 for t in TIERS]
        )
        labels.append("DDP, 2 ranks (sum)")
    return series, labels


def plot(summary: dict[str, Any], path: Path) -> None:
    """Three panels: build time, warm throughput, and memory (PSS) by tier."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parallels = list(summary["by_parallel"])
    figure, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    width = 0.8 / len(parallels)
    for number, parallel in enumerate(parallels):
        tiers = summary["by_parallel"][parallel]["tiers"]
        offsets = [i + (number - (len(parallels) - 1) / 2) * width for i in range(len(TIERS))]
        label = f"parallel={parallel}"
        axes[0].bar(offsets, [tiers[t]["build_s"] or 0 for t in TIERS], width, label=label)
        axes[1].bar(
            offsets, [tiers[t]["warm_samples_per_s"] or 0 for t in TIERS], width, label=label
        )
    axes[0].set_title("build / first epoch (s), lower is better")
    axes[1].set_title("warm epoch throughput (samples/s)")
    series, memory_labels = _memory_series(summary)
    width = 0.8 / len(series)
    for number, (values, label) in enumerate(zip(series, memory_labels, strict=True)):
        offsets = [i + (number - (len(series) - 1) / 2) * width for i in range(len(TIERS))]
        axes[2].bar(offsets, values, width, label=label)
    axes[2].axhline(
        summary["params"]["decoded_bytes"] / (1 << 20),
        color="black",
        linestyle="--",
        linewidth=1,
        label="one copy of the decoded split",
    )
    axes[2].set_title("PSS above the interpreter's own (MiB)")
    for axis in axes:
        axis.set_xticks(range(len(TIERS)), TIERS)
        axis.set_ylim(top=axis.get_ylim()[1] * 1.4)  # headroom for the legend
        axis.legend(fontsize="small", loc="upper left")
        axis.grid(axis="y", alpha=0.3)
    params = summary["params"]
    figure.suptitle(
        f"shardcache tiers: N={params['items']} images {params['size']}x{params['size']}, "
        f"batch {params['batch_size']}, medians of {params['repeats']}"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
