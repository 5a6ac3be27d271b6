"""Cooperative builds without torch.distributed: members meet through files and locks only.

Children (forked, see `support.builds`) are the members of one `Team`, as the ranks of a
job would be after their exchange: each decodes its slice, one publishes. Then the faults:
a member killed with SIGKILL (the others fail with `PeerFailedError`, the next build decodes
only what no verified shard holds), a member whose loader fails, and the pure parts (teams
from the ranks' views, the plan's split, the directory's identity).
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from shardcache.store.atomic import temporary_name
from shardcache.store.jobfiles import JobFiles, directory_identity
from shardcache.store.layout import JOB_FILE, CacheRoot
from shardcache.store.teams import Plan
from shardcache.store.tree import CacheTree
from shardcache.tiers.distributed import View, decoding_processes, form_teams
from support.builds import (
    child_build,
    child_rank,
    child_spec,
    expected_decodes,
    leftovers,
    published,
    staged_samples,
    team_spec,
    verify_recovery,
)
from support.decodes import decode_count, decodes
from support.loaders import N_ITEMS, make_items, reference_digest
from support.processes import DEADLINE, fork_child

REFERENCE = reference_digest(make_items())
LOCKS = ["fcntl", "soft"]


def _job_files(cache_dir: Path) -> list[str]:
    locks = CacheRoot(cache_dir).locks()
    return (
        sorted(p.name for p in locks.glob("*") if JOB_FILE.match(p.name)) if locks.is_dir() else []
    )


def _members(tmp_path: Path, count: int, lock: str, **options: object) -> list[dict]:
    """Specs of ``count`` members of one job's team, starting together."""
    barrier = str(tmp_path / "barrier")
    return [
        child_spec(
            tmp_path,
            f"m{me}",
            team=team_spec("00c0ffee", list(range(count)), me),
            env={"SHARDCACHE_LOCK": lock},
            barrier=barrier,
            parties=count,
            **options,
        )
        for me in range(count)
    ]


# ---- the pure parts -------------------------------------------------------------------------


def _view(rank: int, identity: str | None, missing: tuple[str, ...], host: str = "h0") -> View:
    return View(rank, host, 100 + rank, identity, missing, f"{rank:x}0")


def test_teams_are_the_ranks_that_share_a_directory_and_miss_a_key() -> None:
    views = [
        _view(0, "shared", ("a", "b"), "h0"),
        _view(1, "shared", ("a",), "h0"),
        _view(2, "shared", ("a", "b"), "h1"),
        _view(3, "local1", ("a",), "h1"),  # its own directory: alone
        _view(4, None, ("a",), "h1"),  # a directory without an identity: alone
        _view(5, "shared", (), "h1"),  # has everything: not a member
    ]
    teams = form_teams(views, 2)
    assert sorted(teams) == ["a", "b"]
    assert [m.rank for m in teams["a"].members] == [0, 1, 2]
    assert (teams["a"].me, teams["a"].job, teams["a"].coordinator.rank) == (2, "00", 0)
    assert [m.rank for m in teams["b"].members] == [0, 2]
    assert form_teams(views, 3) == form_teams(views, 4) == form_teams(views, 5) == {}
    # Every member computes the same team, each with its own position.
    assert [form_teams(views, rank)["a"].me for rank in (0, 1, 2)] == [0, 1, 2]


def test_one_process_per_cpu_is_shared_by_the_ranks_decoding_on_a_host() -> None:
    views = [_view(0, "d", ("a",)), _view(1, "d", ("a",)), _view(2, "d", (), "h0")]
    assert decoding_processes(-1, views, 0) == -1
    assert decoding_processes(3, views, 0) == 3
    cpus = len(os.sched_getaffinity(0))
    assert decoding_processes(0, views, 0) == max(1, cpus // 2)


def test_the_plan_splits_the_missing_samples_into_equal_runs() -> None:
    missing = [*range(3, 10), *range(20, 25)]  # 12 samples, two holes
    plan = Plan.split("ab", 30, missing, 3)
    assert [plan.indices(part) for part in range(3)] == [
        [3, 4, 5, 6],
        [7, 8, 9, 20],
        [21, 22, 23, 24],
    ]
    assert plan.slices[1] == ((7, 10), (20, 21))
    assert (plan.to_decode, plan.working()) == (12, [0, 1, 2])
    assert Plan.split("ab", 30, [5], 3).working() == [0]
    assert plan.indices(7) == []


def test_every_process_reads_the_same_directory_identity(cache_dir: Path) -> None:
    root = CacheRoot(cache_dir)
    with ThreadPoolExecutor(8) as pool:
        tokens = set(pool.map(lambda _: directory_identity(cache_dir), range(8)))
    assert len(tokens) == 1
    assert None not in tokens
    assert root.identity().read_text().strip() == tokens.pop()


def test_a_finished_jobs_files_go_with_the_temporary_ones_a_killed_member_left(
    cache_dir: Path,
) -> None:
    key, other_key = "a" * 64, "b" * 64
    owner = f"{key}.00c0ffee.0.owner.json"
    mine = [f"{key}.00c0ffee.plan.json", owner, temporary_name(owner)]
    others = [
        f"{key}.0badf00d.0.owner.json",  # another job of the same key
        temporary_name(f"{key}.0badf00d.0.owner.json"),
        f"{other_key}.00c0ffee.plan.json",  # the same job id, another key
        temporary_name(f"{key}.owner.json"),  # the build lock's (its next holder's to remove)
    ]
    with CacheTree.open(cache_dir, create=True) as tree, tree.locks(create=True) as locks:
        for name in mine + others:
            os.close(locks.open_file(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        JobFiles(locks, key, "00c0ffee").remove_all()
        assert sorted(name for name, _ in locks.entries()) == sorted(others)


def test_a_directory_that_cannot_hold_an_identity_has_none(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert directory_identity(blocker / "cache") is None


# ---- members building together -----------------------------------------------------------


def _run(specs: list[dict]) -> list[dict]:
    children = [fork_child(child_build, spec) for spec in specs]
    codes = [child.wait() for child in children]
    assert codes == [0] * len(children)
    return [child.result() for child in children]


@pytest.mark.slow
@pytest.mark.parametrize("lock", LOCKS)
def test_members_decode_disjoint_slices_and_one_publishes(
    tmp_path: Path, decode_log: Path, cache_dir: Path, lock: str
) -> None:
    results = _run(_members(tmp_path, 3, lock, delay=0.01))
    assert [result.get("error") for result in results] == [None] * 3
    assert {result["digest"] for result in results} == {REFERENCE}
    per_member = Counter(decode.tag for decode in decodes(decode_log))
    per_item = Counter(map(str, (decode.item for decode in decodes(decode_log))))
    # Every item once, in three slices of equal size (40 = 14 + 13 + 13).
    assert (sorted(per_member.values()), set(per_item.values())) == ([13, 13, 14], {1})
    assert len(per_item) == N_ITEMS
    assert len(published(cache_dir)) == 1
    assert (_job_files(cache_dir), leftovers(cache_dir)) == ([], [])
    assert not list((cache_dir / ".staging").glob("*"))
    verify_recovery(tmp_path, "after", REFERENCE, env={"SHARDCACHE_LOCK": lock})


@pytest.mark.slow
@pytest.mark.parametrize("lock", LOCKS)
@pytest.mark.parametrize("victim", [0, 2], ids=["coordinator", "member"])
def test_a_killed_member_ends_the_build_and_the_next_one_resumes(
    tmp_path: Path, decode_log: Path, cache_dir: Path, lock: str, victim: int
) -> None:
    specs = _members(tmp_path, 3, lock, delay=0.05)
    children = [fork_child(child_build, spec) for spec in specs]
    deadline = time.monotonic() + DEADLINE
    while decode_count(decode_log, f"m{victim}") < 4:
        assert time.monotonic() < deadline, "the victim did not start decoding"
        assert children[victim].running(), "the victim ended before it was killed"
        time.sleep(0.005)
    os.kill(children[victim].pid, signal.SIGKILL)
    codes = [child.wait() for child in children]
    assert codes[victim] == -signal.SIGKILL
    survivors = [child.result() for part, child in enumerate(children) if part != victim]
    assert [(r.get("error"), r.get("rank_at_fault")) for r in survivors] == [
        ("PeerFailedError", victim)
    ] * 2, survivors
    assert f"rank {victim} " in survivors[0]["message"]
    assert "the next run resumes" in survivors[0]["message"]
    # Never an item twice in one job; what was written stays for the next build.
    items = Counter(map(str, (decode.item for decode in decodes(decode_log))))
    assert set(items.values()) == {1}
    assert staged_samples(cache_dir) > 0
    assert published(cache_dir) == []
    missing = expected_decodes(cache_dir)
    recovery = verify_recovery(tmp_path, "next", REFERENCE, env={"SHARDCACHE_LOCK": lock})
    assert recovery["next_decodes"] == missing < N_ITEMS
    assert _job_files(cache_dir) == []  # the next build ended the abandoned one and tidied


@pytest.mark.slow
def test_a_member_that_fails_names_its_error_to_the_others(tmp_path: Path, cache_dir: Path) -> None:
    # Item 30 is in the last member's slice (27-39) of three.
    results = _run(_members(tmp_path, 3, "fcntl", bad=[30]))
    errors = [(result.get("error"), result.get("rank_at_fault")) for result in results]
    assert errors == [("PeerFailedError", 2), ("PeerFailedError", 2), ("BadSamplesError", None)]
    assert "rank 2 " in results[0]["message"]
    assert "BadSamplesError" in results[0]["message"]
    assert "img/0030.png" in results[1]["message"]
    assert published(cache_dir) == []


@pytest.mark.slow
def test_a_later_build_waits_for_the_members_of_an_abandoned_one(
    tmp_path: Path, decode_log: Path, cache_dir: Path
) -> None:
    # The coordinator dies while the other member decodes: the next builder takes the build
    # lock at once, and must not scan the staging directory while that member writes.
    coordinator, member = (
        fork_child(child_build, spec) for spec in _members(tmp_path, 2, "fcntl", delay=0.2)
    )
    deadline = time.monotonic() + DEADLINE
    while decode_count(decode_log, "m1") < 2:
        assert time.monotonic() < deadline, "the member did not start decoding"
        time.sleep(0.005)
    os.kill(coordinator.pid, signal.SIGKILL)
    after = fork_child(child_build, child_spec(tmp_path, "next", lock_timeout=30.0))
    assert [coordinator.wait(), member.wait(), after.wait()] == [-signal.SIGKILL, 0, 0]
    assert member.result()["error"] == "PeerFailedError"
    result = after.result()
    assert (result.get("error"), result["digest"]) == (None, REFERENCE)
    tags = [decode.tag for decode in decodes(decode_log)]
    assert "next" not in tags[: len(tags) - tags[::-1].index("m1")]  # it began once m1 stopped
    decoded = Counter(str(decode.item) for decode in decodes(decode_log) if decode.tag == "next")
    assert set(decoded.values()) == {1}
    assert len(decoded) < N_ITEMS  # it resumed from the shards both members wrote
    assert (_job_files(cache_dir), leftovers(cache_dir)) == ([], [])


# ---- the disk tier's exchange, without Lightning ------------------------------------------


def _ranks(tmp_path: Path, cache_dirs: list[Path], delays: list[float] | None = None) -> list[dict]:
    """Run a job of one rank per cache directory; rank r's decodes take ``delays[r]`` s."""
    world = len(cache_dirs)
    specs = [
        {
            **child_spec(tmp_path, f"r{rank}", delay=(delays or [0.0] * world)[rank]),
            "cache_dir": str(cache_dirs[rank]),
            "rank": rank,
            "world": world,
            "init": str(tmp_path / "rendezvous"),
        }
        for rank in range(world)
    ]
    children = [fork_child(child_rank, spec) for spec in specs]
    assert [child.wait() for child in children] == [0] * world
    return [child.result() for child in children]


@pytest.mark.slow
def test_ranks_sharing_a_directory_build_together_through_the_disk_tier(
    tmp_path: Path, decode_log: Path, cache_dir: Path
) -> None:
    results = _ranks(tmp_path, [cache_dir] * 3)
    assert [(r.get("error"), r["digest"], r["decodes"]) for r in results] == [
        (None, REFERENCE, 14),
        (None, REFERENCE, 13),
        (None, REFERENCE, 13),
    ]
    assert len(published(cache_dir)) == 1


@pytest.mark.slow
def test_ranks_that_build_alone_still_wait_for_each_other_in_setup(
    tmp_path: Path, decode_log: Path
) -> None:
    # One directory per rank: no team. The slow rank's build must end before the other
    # leaves setup, or that one would wait in Lightning's next barrier (30 minutes at most).
    dirs = [tmp_path / "cache0", tmp_path / "cache1"]
    slow, fast = _ranks(tmp_path, dirs, delays=[0.05, 0.0])
    assert [(r.get("error"), r["digest"], r["decodes"]) for r in (slow, fast)] == [
        (None, REFERENCE, N_ITEMS)
    ] * 2
    assert abs(slow["returned"] - fast["returned"]) < 1.0
