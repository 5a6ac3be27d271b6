"""The benchmarks: the synthetic data generator; `benchmarks.tiers`, `benchmarks.cooperative`."""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from shardcache.loaders import ImageFileLoader, read_json_split

REPO = Path(__file__).resolve().parents[1]
TIERS = ("none", "memory", "disk", "disk-float32")
DISK_TIERS = ("disk", "disk-float32")
LABELS = {"none": "`none`", "memory": "`memory`", "disk": "`disk` (narrow)"}
LABELS["disk-float32"] = "`disk` (float32)"
TIER_KEYS = {
    "build_s",
    "warm_samples_per_s",
    "first_batch_s",
    "decodes_first_run",
    "decodes_second_run",
    "rss_mb",
    "pss_mb",
    "cache_bytes",
    "cold_samples_per_s",
    "cold_read_mb_s",
}
ITEMS = 24
SIZE = 32
RUN_TIMEOUT_S = 600


def synthetic() -> ModuleType:
    # benchmarks/ is a top-level package of the repository, not of the installed library.
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return importlib.import_module("benchmarks.synthetic")


# ---- the generator -------------------------------------------------------------------------


def test_generated_split_decodes_with_the_ready_loaders(tmp_path):
    module = synthetic()
    params = module.SyntheticParams(count=20, size=48, validation=5)
    dataset = module.ensure_dataset(params, tmp_path)
    split = read_json_split(dataset.split_path)
    assert [len(split["train"]), len(split["validation"])] == [20, 5]
    assert sum(label for _, label in split["train"]) == 6  # 30% of 20
    tensor, metadata = ImageFileLoader(dataset.root).sample(split["train"][3])
    assert tensor.shape == (1, 48, 48)
    assert tensor.dtype == torch.float32
    assert metadata == {"name": split["train"][3][0], "label": split["train"][3][1]}
    assert 0.3 < dataset.info["compression"] < 0.8  # PNG neither trivial nor incompressible


def test_generation_is_deterministic_and_reused(tmp_path):
    module = synthetic()
    params = module.SyntheticParams(count=6, size=24)
    first = module.ensure_dataset(params, tmp_path / "a")
    second = module.ensure_dataset(params, tmp_path / "b")
    names = sorted(path.relative_to(first.root) for path in first.root.rglob("*.png"))
    assert names
    assert all((first.root / n).read_bytes() == (second.root / n).read_bytes() for n in names)
    marker = first.root / "img" / "marker"
    marker.write_text("kept")
    assert module.ensure_dataset(params, tmp_path / "a").root == first.root
    assert marker.exists()  # reused, not regenerated


def test_a_changed_parameter_gives_another_data_set(tmp_path):
    module = synthetic()
    gray = module.ensure_dataset(module.SyntheticParams(count=4, size=24), tmp_path)
    rgb = module.ensure_dataset(
        module.SyntheticParams(count=4, size=24, mode="rgb", image_format="jpeg"), tmp_path
    )
    assert gray.root != rgb.root
    item = read_json_split(rgb.split_path)["train"][0]
    assert item[0].endswith(".jpg")
    tensor, _ = ImageFileLoader(rgb.root, mode="rgb").sample(item)
    assert tensor.shape == (3, 24, 24)


# ---- the tier benchmark, end to end --------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[dict[str, Any], Path, str]:
    base = tmp_path_factory.mktemp("bench")
    results = base / "results"
    command = [
        sys.executable,
        "-m",
        "benchmarks.tiers",
        "--quick",
        "--items",
        str(ITEMS),
        "--size",
        str(SIZE),
        "--repeats",
        "1",
        "--parallel",
        "-1",
        "--data-dir",
        str(base / "data"),
        "--results-dir",
        str(results),
    ]
    completed = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    summary = json.loads((results / "summary.json").read_text())
    return summary, results, completed.stdout


@pytest.mark.slow
def test_summary_has_the_documented_shape(tiny_run):
    summary, _, _ = tiny_run
    assert {
        "tiers",
        "ratios",
        "narrow_vs_float32",
        "served_identical",
        "machine",
        "params",
    } <= summary.keys()
    assert set(summary["tiers"]) == set(TIERS)
    for tier in TIERS:
        assert set(summary["tiers"][tier]) == TIER_KEYS, tier
    assert set(summary["ratios"]) == {"none", "disk", "disk-float32"}
    assert set(summary["narrow_vs_float32"]) == {
        "build_s",
        "warm_samples_per_s",
        "first_epoch_samples_per_s",
        "cold_samples_per_s",
        "first_batch_s",
        "cache_bytes",
    }
    assert summary["params"]["items"] == ITEMS
    assert summary["machine"]["cpus"] >= 1


@pytest.mark.slow
def test_decode_counts_show_what_each_tier_keeps(tiny_run):
    summary, _, _ = tiny_run
    counts = {
        tier: (figures["decodes_first_run"], figures["decodes_second_run"])
        for tier, figures in summary["tiers"].items()
    }
    assert counts == {
        "none": (ITEMS, ITEMS),
        "memory": (ITEMS, ITEMS),
        "disk": (ITEMS, 0),
        "disk-float32": (ITEMS, 0),
    }
    decodes = {tier: ddp["decodes_total"] for tier, ddp in summary["ddp"].items()}
    assert decodes == {"memory": 2 * ITEMS, "disk": ITEMS}  # a copy per rank vs once per job


@pytest.mark.slow
def test_figures_are_sane(tiny_run):
    summary, _, _ = tiny_run
    sample_bytes = summary["params"]["sample_bytes"]
    assert sample_bytes == SIZE * SIZE * 4  # float32 [1, SIZE, SIZE]
    for tier, figures in summary["tiers"].items():
        for key in ("build_s", "warm_samples_per_s", "first_batch_s", "rss_mb", "pss_mb"):
            value = figures[key]
            assert math.isfinite(value), (tier, key)
            assert value > 0, (tier, key)
        assert figures["pss_mb"] <= figures["rss_mb"] * 1.01, tier
    assert summary["tiers"]["none"]["cache_bytes"] == 0
    assert summary["tiers"]["memory"]["cache_bytes"] == 0
    float32_bytes = summary["tiers"]["disk-float32"]["cache_bytes"]
    assert float32_bytes > ITEMS * sample_bytes
    # 8-bit PNGs loaded as float32 / 255: stored as uint8 (plus the same headers).
    assert summary["tiers"]["disk"]["cache_bytes"] < float32_bytes / 2
    block = summary["by_parallel"]["-1"]
    assert block["tiers"]["disk"]["storage"]["narrow_tensors"] == ITEMS
    assert block["tiers"]["disk-float32"]["storage"]["narrow_tensors"] == 0
    for tier in DISK_TIERS:
        figures = block["tiers"][tier]
        assert figures["cold_samples_per_s"] > 0, tier
        assert figures["cold_read_mb_s"] > 0, tier
        assert figures["cold_resident_after_drop"] < 0.5, tier  # the drop evicted the pages
    assert summary["served_identical"]["identical"], summary["served_identical"]
    for ratios in summary["ratios"].values():
        assert all(value > 0 for value in ratios.values())
    scale = summary["params"]["scale"]
    assert summary["by_parallel"]["-1"]["first_batch"][f"{scale}N"] > 0
    assert {target["pass"] for target in summary["targets"]} <= {True, False}


@pytest.mark.slow
def test_report_plot_and_table_are_written(tiny_run):
    _, results, stdout = tiny_run
    report = (results / "report.md").read_text()
    assert "## Targets" in report
    assert all(f"| {label} |" in report for label in LABELS.values())
    assert "## Narrow against float32 storage" in report
    assert (results / "tiers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| `disk` (float32) |" in stdout


# ---- the cooperative build benchmark, end to end -------------------------------------------


@pytest.mark.slow
def test_cooperative_benchmark_times_both_builders(tmp_path):
    results = tmp_path / "results"
    command = [
        *(sys.executable, "-m", "benchmarks.cooperative", "--items", str(ITEMS)),
        *("--size", str(SIZE), "--thumbnail", "8", "--repeats", "1", "--cpu-work", "100000"),
        *("--data-dir", str(tmp_path / "data"), "--results-dir", str(results)),
    ]
    completed = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    summary = json.loads((results / "cooperative.json").read_text())
    assert set(summary["jobs"]) == {"2 ranks, 1 node", "4 ranks, 2 nodes"}
    for job in summary["jobs"].values():
        assert job["single_s"] > 0
        assert job["cooperative_s"] > 0
        assert job["ratio"] > 0
    decodes = {(run["job"], run["builder"]): run["decodes_per_rank"] for run in summary["runs"]}
    assert decodes[("2 ranks, 1 node", "single")] == [ITEMS, 0]
    assert decodes[("2 ranks, 1 node", "cooperative")] == [ITEMS // 2] * 2
    assert decodes[("4 ranks, 2 nodes", "cooperative")] == [ITEMS // 4] * 4
    assert sum(decodes[("4 ranks, 2 nodes", "single")]) == ITEMS  # rank 0 or 2 built it
    assert {"before", "after"} == set(summary["cpu_check"])
    assert "cooperative / single" in (results / "cooperative.md").read_text()
