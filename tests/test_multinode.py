"""Two simulated nodes of two ranks each, on localhost: real Lightning DDP jobs (gloo, CPU).

Each node is one launcher process with Lightning's variables (`support.lightning_job`).
The layouts users have:

- one cache directory shared by every node (a cluster filesystem), with ``fcntl`` locks and
  with ``SHARDCACHE_LOCK=soft``: one build for the whole job, by all four ranks together;
- a directory per node (node-local disks): one build per node, by that node's two ranks.

Both ``prepare_data_per_node`` settings run (the first job with one, the next with the
other): in a multi-rank job ``prepare_data`` defers to ``setup``, so they behave the same.
A job costs 20-40 s here, nearly all of it importing Lightning on every rank, so each test
runs as few jobs as its assertions need.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from support.builds import SHARD_BYTES, staged_samples
from support.decodes import decodes
from support.lightning_job import JobResult, expected_digests, job_config, run_job
from support.processes import DEADLINE

TRAIN, VALIDATION = 64, 16

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _served_correctly(result: JobResult, scratch: Path) -> None:
    """The job ended well, and all four ranks served every sample bit for bit."""
    assert result.returncodes == [0, 0], result.tail()
    assert sorted(result.reports) == [0, 1, 2, 3], result.tail()
    reports = result.reports.values()
    assert len({report["pid"] for report in reports}) == 4
    served = expected_digests(scratch, TRAIN, VALIDATION)
    assert [(r["train"], r["validation"], r["world_size"]) for r in reports] == [
        (served["train"], served["validation"], 4)
    ] * 4


def _decodes_by_rank(out_dir: Path) -> dict[int, list[str]]:
    """The items each rank of the job in ``out_dir`` decoded."""
    ranks = {int(path.read_text()): int(path.name[4:]) for path in out_dir.glob("pid-*")}
    by_rank: dict[int, list[str]] = {}
    for decode in decodes(out_dir / "decodes.log"):
        by_rank.setdefault(ranks[decode.pid], []).append(str(decode.item))
    return by_rank


def _once_each(items: Sequence[str]) -> bool:
    """Every item of the split decoded exactly once."""
    return len(items) == TRAIN + VALIDATION == len(set(items))


@pytest.mark.parametrize(("lock", "per_node"), [("fcntl", False), ("soft", True)])
def test_a_shared_directory_is_built_once_by_all_ranks_together(
    tmp_path: Path, cache_dir: Path, lock: str, per_node: bool
) -> None:
    env = {"SHARDCACHE_LOCK": lock}
    first = run_job(job_config(tmp_path / "job1", per_node=per_node), [cache_dir] * 2, env=env)
    second = run_job(job_config(tmp_path / "job2", per_node=not per_node), [cache_dir] * 2, env=env)
    _served_correctly(first, tmp_path)
    _served_correctly(second, tmp_path)
    by_rank = _decodes_by_rank(tmp_path / "job1")
    assert sorted(by_rank) == [0, 1, 2, 3]  # every rank decoded a slice
    assert _once_each([item for items in by_rank.values() for item in items])
    assert _decodes_by_rank(tmp_path / "job2") == {}
    caches = {tuple(report["caches"]) for r in (first, second) for report in r.reports.values()}
    assert len(caches) == 1
    assert all(Path(path).parent == cache_dir for path in caches.pop())


def test_node_local_directories_are_built_once_per_node(tmp_path: Path) -> None:
    dirs = [tmp_path / "node0-cache", tmp_path / "node1-cache"]
    first = run_job(job_config(tmp_path / "job1", per_node=False), dirs)
    second = run_job(job_config(tmp_path / "job2", per_node=True), dirs)
    _served_correctly(first, tmp_path)
    _served_correctly(second, tmp_path)
    by_rank = _decodes_by_rank(tmp_path / "job1")
    assert sorted(by_rank) == [0, 1, 2, 3]  # both ranks of each node decoded a slice
    assert _once_each(by_rank[0] + by_rank[1])  # node 0
    assert _once_each(by_rank[2] + by_rank[3])  # node 1
    assert _decodes_by_rank(tmp_path / "job2") == {}
    for result in (first, second):
        for report in result.reports.values():
            assert {Path(path).parent for path in report["caches"]} == {dirs[report["node"]]}


def _kill_after(out_dir: Path, rank: int, decoded: int) -> Any:
    """What to do during a job: SIGKILL ``rank`` once it has decoded ``decoded`` items."""

    def kill(processes: list[Any]) -> None:
        deadline = time.monotonic() + 3 * DEADLINE  # the ranks import Lightning first
        pid_file = out_dir / f"pid-{rank}"
        pid = None
        log = out_dir / "decodes.log"
        while pid is None or sum(1 for d in decodes(log) if d.pid == pid) < decoded:
            assert time.monotonic() < deadline, f"rank {rank} did not decode {decoded} items"
            assert all(p.poll() is None for p in processes), "the job ended before the kill"
            if pid is None and pid_file.exists():
                pid = int(pid_file.read_text())
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)

    return kill


def test_a_rank_killed_mid_build_leaves_shards_that_the_next_job_resumes(
    tmp_path: Path, cache_dir: Path
) -> None:
    settings: dict[str, Any] = {"delay": 0.1, "shard_bytes": SHARD_BYTES}
    out = tmp_path / "job1"
    first = run_job(
        job_config(out, **settings),
        [cache_dir] * 2,
        during=_kill_after(out, rank=3, decoded=4),
    )
    assert 0 not in first.returncodes, first.tail()
    assert "PeerFailedError" in first.outputs[0], first.tail()
    # Rank 3, or rank 2: Lightning's launcher kills a node's other ranks when one dies.
    assert re.search(r"PeerFailedError: .* rank [23] \(pid", first.outputs[0]), first.tail()
    killed = [item for items in _decodes_by_rank(out).values() for item in items]
    assert Counter(killed).most_common(1)[0][1] == 1  # never an item twice in one job
    staged = staged_samples(cache_dir)
    assert 0 < staged < TRAIN + VALIDATION

    second = run_job(job_config(tmp_path / "job2", **settings), [cache_dir] * 2)
    _served_correctly(second, tmp_path)
    resumed = [i for items in _decodes_by_rank(tmp_path / "job2").values() for i in items]
    assert (len(resumed), len(set(resumed))) == (TRAIN + VALIDATION - staged,) * 2
