"""mednet 2.1.0's own tests against `shardcache.mednet`, with only the data module swapped.

For each tier, mednet's Montgomery data-module tests and its classify command-line workflow
run from its source distribution in a child pytest, with our plugin
(`support.mednet_swap`) making every mednet data module ours, on synthetic images at the
paths of mednet's montgomery splits (`support.mednet_suite`). mednet's
``tests/test_dataset.py`` builds its ``CachedDataset`` directly: it runs once, against ours.
Every selected test must pass; the one deselected (and why) is in `DESELECTED`; the log
assertions adapted for the cached tiers are in `ADAPTATIONS`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

from support.mednet_suite import (
    DESELECTED,
    EXPECTED_SKIPS,
    SELECTION,
    adapted_tests,
    mednet_sdist,
    montgomery_data,
)
from support.processes import TESTS_DIR

pytestmark = pytest.mark.slow

SUITE_TIMEOUT = 1200


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """mednet's unpacked sdist, and the XDG_CONFIG_HOME that points it at synthetic data."""
    sdist = mednet_sdist()
    return sdist, montgomery_data(sdist, tmp_path_factory.mktemp("montgomery"))


def _outcomes(junit: Path) -> dict[str, str]:
    """Each test's outcome in a JUnit XML report: passed, failed, error or skipped."""
    outcomes = {}
    for case in ElementTree.parse(junit).iter("testcase"):  # noqa: S314 (our child's report)
        path = case.get("classname", "").replace(".", "/")
        name = f"{path}.py::{case.get('name')}"
        kinds = [child.tag for child in case if child.tag in {"failure", "error", "skipped"}]
        outcomes[name] = kinds[0] if kinds else "passed"
    return outcomes


def _run(
    work: Path, xdg: Path, tests: list[str], extra_env: dict[str, str]
) -> tuple[dict[str, str], str]:
    junit = work / "junit.xml"
    env = dict(os.environ)
    env.update(
        XDG_CONFIG_HOME=str(xdg),
        OMP_NUM_THREADS="1",  # mednet's training on 2 busy cores: 3x faster with one thread
        PYTHONPATH=os.pathsep.join([str(TESTS_DIR), *filter(None, [env.get("PYTHONPATH")])]),
        **extra_env,
    )
    deselect = [argument for name in DESELECTED for argument in ("--deselect", name)]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "support.mednet_swap",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=--import-mode=append",
            f"--junitxml={junit}",
            "-q",
            *tests,
            *deselect,
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUITE_TIMEOUT,
        check=False,
    )
    if not junit.exists():
        raise AssertionError(
            f"mednet's tests did not run:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return _outcomes(junit), result.stdout


@pytest.mark.parametrize("tier", ["disk", "memory", "none"])
def test_mednets_own_tests_pass_on_every_tier(
    prepared: tuple[Path, Path], tmp_path: Path, tier: str
) -> None:
    sdist, xdg = prepared
    work = adapted_tests(sdist, tmp_path / "mednet", adapt=tier != "none")
    report = tmp_path / "swap.json"
    outcomes, output = _run(
        work,
        xdg,
        list(SELECTION),
        {
            "SHARDCACHE_SWAP_KWARGS": json.dumps(
                {"cache": tier, "cache_dir": str(tmp_path / "cache")}
            ),
            "SHARDCACHE_SWAP_REPORT": str(report),
        },
    )
    problems = {name: kind for name, kind in outcomes.items() if kind not in {"passed", "skipped"}}
    skipped = {name for name, kind in outcomes.items() if kind == "skipped"}
    assert problems == {}, output[-6000:]
    assert skipped == EXPECTED_SKIPS
    assert len(outcomes) == 53  # the selection ran whole (54 tests, one deselected)
    # Every test that used a data module used ours (the plugin fails those that did not).
    used = json.loads(report.read_text())
    assert sum(counts.get("setup:ours", 0) for counts in used.values()) >= 30
    assert not any("mednet" in key for counts in used.values() for key in counts)
    if tier == "disk":
        assert any((tmp_path / "cache").iterdir())


def test_mednets_cached_dataset_tests_pass_on_ours(
    prepared: tuple[Path, Path], tmp_path: Path
) -> None:
    sdist, xdg = prepared
    work = adapted_tests(sdist, tmp_path / "mednet", adapt=False)
    outcomes, output = _run(work, xdg, ["tests/test_dataset.py"], {"SHARDCACHE_SWAP_DATASET": "1"})
    assert set(outcomes.values()) == {"passed"}, output[-4000:]
    assert len(outcomes) == 4
