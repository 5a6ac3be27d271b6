"""`python -m benchmarks.peers`: missing, failing and hanging peers are reported, not fatal.

These tests need none of the peer packages: they run real subprocesses that fail or hang
(through `benchmarks.harness`, the child runner that every benchmark uses).
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def _module(name: str) -> ModuleType:
    # benchmarks/ is a top-level package of the repository, not of the installed library.
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def peers() -> ModuleType:
    return _module("benchmarks.peers")


@pytest.fixture(scope="module")
def harness() -> ModuleType:
    return _module("benchmarks.harness")


@pytest.fixture(scope="module")
def peers_report() -> ModuleType:
    return _module("benchmarks.peers_report")


def test_missing_peer_is_reported_not_installed(peers: ModuleType) -> None:
    ghost = peers.System(
        "ghost", "Ghost", "shardcache_no_such_peer", "shardcache-no-such-peer", True, "-"
    )
    assert peers.availability(ghost) == (False, None)
    args = peers.parse_args(["--items", "8"])
    entry = peers.measure_system(ghost, {"count": 8, "data_dir": "/nonexistent"}, args)
    assert entry["status"] == "not installed"
    assert "shardcache_no_such_peer" in entry["error"]
    assert "w0" not in entry  # nothing was run for it


def test_failing_measurement_reports_its_error(harness: ModuleType) -> None:
    code = "import sys; print('noise', file=sys.stderr); raise ValueError('peer exploded')"
    result = harness.run_process([sys.executable, "-c", code], timeout=60)
    assert not result["ok"]
    assert result["error"] == "ValueError: peer exploded"
    assert result["returncode"] == 1


@pytest.mark.slow
def test_hanging_measurement_is_killed_with_its_workers(
    harness: ModuleType, tmp_path: Path
) -> None:
    pid_file = tmp_path / "worker.pid"
    code = (
        "import subprocess, sys, time\n"
        "worker = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(worker.pid))\n"
        "time.sleep(600)\n"
    )
    started = time.monotonic()
    result = harness.run_process([sys.executable, "-c", code], timeout=2)
    assert time.monotonic() - started < 60
    assert not result["ok"]
    assert "timed out after 2 s" in result["error"]
    worker = int(pid_file.read_text())
    for _ in range(100):  # the killed worker is reaped by init shortly after
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"worker {worker} of the hung measurement is still alive")


def test_report_shows_failed_and_missing_peers(peers_report: ModuleType) -> None:
    systems = {
        "shardcache-disk": {
            "label": "shardcache disk tier",
            "peer": False,
            "version": "0.1.0",
            "how": "-",
            "status": "ok",
            "w0": {"samples_per_s": 9000.0},
            "w2": {"samples_per_s": 6000.0},
            "sequential": {"reads_per_s": 50000.0},
        },
        "litdata": {
            "label": "LitData",
            "peer": True,
            "version": "0.2.76",
            "how": "-",
            "status": "partial",
            "error": "w2: timed out after 900 s (hung?); killed",
            "w0": {"samples_per_s": 2000.0},
            "w2": {"ok": False, "error": "timed out after 900 s (hung?); killed"},
            "sequential": {"reads_per_s": 3000.0},
        },
        "ghost": {
            "label": "Ghost",
            "peer": True,
            "version": None,
            "how": "-",
            "status": "not installed",
            "error": "module 'ghost' not found",
        },
    }
    memcpy = {"gb_s": 20.0}
    summary = {
        "command": "python -m benchmarks.peers",
        "started": "now",
        "machine": {"cpus": 2, "python": "3.11", "torch": "2.x"},
        "workload": {
            "count": 8,
            "shape": [1, 512, 512],
            "sample_bytes": 1 << 20,
            "batch_size": 32,
            "repeats": 3,
            "workers": 2,
        },
        "memcpy": memcpy,
        "systems": systems,
    }
    summary.update(peers_report.summarize(systems, memcpy, 1 << 20))
    statuses = {target["target"]: target["status"] for target in summary["targets"]}
    assert statuses["disk tier w0 >= 3x the best peer's w0"] == "PASS"  # 9000 / 2000
    assert statuses["disk tier w0 >= 40% of memcpy bandwidth"] == "PASS"  # 9.4 GB/s of 20
    assert statuses["disk tier w2 >= 2x the best peer's w2"] == "n/a"  # no peer finished w2
    text = peers_report.markdown(summary)
    assert "| Ghost | - | not installed |" in text
    assert "| LitData | 0.2.76 | 2,000 | timed out | 3,000 |" in text
    assert "- Ghost: module 'ghost' not found" in text


# ---- the stage profile (benchmarks.stages) ---------------------------------------------------


def test_stage_clock_keeps_exclusive_time() -> None:
    stages = _module("benchmarks.stages")
    clock = stages.StageClock()

    def inner() -> None:
        time.sleep(0.02)

    timed_inner = clock.timed("copy", inner)

    def outer() -> None:
        time.sleep(0.01)
        timed_inner()

    clock.timed("collator", outer)()
    assert clock.calls["copy"] == clock.calls["collator"] == 1
    assert 0.02 <= clock.seconds["copy"] < 0.03 + 0.05
    assert 0.01 <= clock.seconds["collator"] < 0.02 + 0.05  # without inner's 20 ms


class _Noise:
    """A raw loader of tiny float samples (random: stored as they are)."""

    def sample(self, item: int) -> tuple[object, dict[str, int]]:
        import torch

        return torch.rand(1, 32, 32, generator=torch.Generator().manual_seed(item)), {"i": item}

    def label(self, item: int) -> int:
        return item % 2


def test_profile_times_every_stage_and_restores_the_functions(tmp_path: Path) -> None:
    from torch.utils.data import DataLoader

    from shardcache.serving.collate import BatchCollator
    from shardcache.serving.served import ServedDataset
    from shardcache.store import ensure_cache

    stages = _module("benchmarks.stages")
    originals = (BatchCollator.__dict__["__call__"], ServedDataset.__dict__["__getitems__"])
    dataset = ensure_cache(tmp_path, "train", list(range(40)), _Noise())
    loader = DataLoader(
        ServedDataset(dataset), batch_size=8, shuffle=True, collate_fn=BatchCollator(0, False)
    )
    profile = stages.profile_loader(loader, rounds=3)
    assert profile["batches"] == 5
    assert set(profile["stages_s"]) == {stage for stage, _ in stages.STAGES}
    for run in profile["runs"]:
        assert run["served"] == 40
        assert all(run["calls"][stage] > 0 for stage, _ in stages.STAGES), run["calls"]
        assert all(seconds >= 0 for seconds in run["stages_s"].values())
        assert run["unaccounted_s"] >= 0
        assert run["accounted_s"] <= run["instrumented_epoch_s"]
    assert profile["trivial_epoch_s"] > 0
    restored = (BatchCollator.__dict__["__call__"], ServedDataset.__dict__["__getitems__"])
    assert restored == originals
    dataset.close()
