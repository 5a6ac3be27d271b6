"""A build that dies at any moment leaves no cache or a whole one; the next run recovers.

Deterministic crash points: an audit hook (``sys.addaudithook``) calls ``os._exit`` at a
chosen ``open`` or ``os.rename`` of the build, or the loader exits at its k-th decode, in a
child process. Then real ``SIGKILL`` of a build's whole process group at seeded random
moments, fresh and resumed. After each, a fresh process must serve exactly the reference
samples (bitwise) and decode exactly what the staging directory lacks, and the run after it
must decode nothing; a stale lock or staging directory must never block it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from shardcache.store import ensure_cache
from shardcache.store.layout import CacheRoot
from support.builds import (
    SHARD_BYTES,
    child_build,
    child_spec,
    expected_decodes,
    published,
    staged_samples,
    verify_recovery,
)
from support.crash import CRASH_EXIT
from support.loaders import N_ITEMS, SlowLoader, make_items, reference_digest
from support.processes import exec_child, fork_child, wait_for

REFERENCE = reference_digest(make_items())

# Where a build can die: the audit event, a pattern its arguments match, which occurrence
# (or the loader's k-th decode). Each is a row of the crash matrix below.
TMP = r"(?:^|/)\.tmp-[^/ ]*"  # files are opened relative to their directory's descriptor
CRASH_POINTS: dict[str, dict[str, Any]] = {
    "lock owner file write": {"event": "open", "pattern": TMP + r"\.owner\.json "},
    "lock owner file rename": {"event": "os.rename", "pattern": TMP + r"\.owner\.json "},
    "staging mkdir": {"event": "os.mkdir", "pattern": r"^[0-9a-f]{64} "},
    "first decode": {"decode": 1},
    "mid-build decode": {"decode": N_ITEMS // 2},
    "last decode": {"decode": N_ITEMS},
    "first shard temp open": {"event": "open", "pattern": TMP + r"shard-", "nth": 1},
    "third shard temp open": {"event": "open", "pattern": TMP + r"shard-", "nth": 3},
    "first shard rename": {"event": "os.rename", "pattern": TMP + r"shard-", "nth": 1},
    "fourth shard rename": {"event": "os.rename", "pattern": TMP + r"shard-", "nth": 4},
    "last shard rename": {"event": "os.rename", "pattern": TMP + r"shard-", "nth": "last"},
    "items.json write": {"event": "open", "pattern": TMP + r"items\.json "},
    "items.json rename": {"event": "os.rename", "pattern": TMP + r"items\.json "},
    "manifest write": {"event": "open", "pattern": TMP + r"manifest\.json "},
    "manifest rename": {"event": "os.rename", "pattern": TMP + r"manifest\.json "},
    "publish rename": {"event": "os.rename", "pattern": r"^[0-9a-f]{64} "},
    "root fsync after publish": {"event": "os.remove", "pattern": r"\.owner\.json "},
}


@pytest.fixture(scope="module")
def shard_count(tmp_path_factory: pytest.TempPathFactory) -> int:
    """Shards of a whole build of the test items (the crash matrix's "last shard")."""
    workdir = tmp_path_factory.mktemp("layout")
    dataset = ensure_cache(
        workdir / "cache",
        "train",
        make_items(),
        SlowLoader(workdir / "decodes.log"),
        shard_bytes=SHARD_BYTES,
    )
    count = len(dataset.manifest.shards)
    assert count >= 8, "the crash matrix needs builds of several shards"
    return count


def _record(point: str, outcome: dict[str, Any]) -> None:
    """Append the observed outcome to $SHARDCACHE_FAULT_TABLE, when set (for reports)."""
    table = os.environ.get("SHARDCACHE_FAULT_TABLE")
    if table:
        with Path(table).open("a") as stream:
            stream.write(json.dumps({"point": point, **outcome}) + "\n")


def _crash_options(point: str, cache_dir: Path, shard_count: int) -> dict[str, Any]:
    crash = dict(CRASH_POINTS[point])
    if "decode" in crash:
        return {"crash_at_decode": crash["decode"]}
    if crash.get("nth") == "last":
        crash["nth"] = shard_count
    crash["pattern"] = crash["pattern"].replace("{root}", re.escape(str(cache_dir)))
    return {"crash": crash}


def _crash(workdir: Path, tag: str, options: dict[str, Any]) -> dict[str, Any]:
    """Run a build that must die at its crash point; describe what it left behind."""
    child = fork_child(child_build, child_spec(workdir, tag, **options))
    assert child.wait() == CRASH_EXIT, "the build did not reach its crash point"
    cache_dir = workdir / "cache"
    return {
        "published": len(published(cache_dir)),
        "staged_samples": staged_samples(cache_dir),
        "temp_files": len(list((cache_dir / ".staging").rglob(".tmp-*"))),
    }


SOFT_LOCK_POINTS = ["lock owner file write", "mid-build decode", "third shard temp open"]
WORKER_POINTS = ["third shard temp open", "publish rename"]
VARIANTS = (
    [(point, "fcntl", -1) for point in CRASH_POINTS]
    + [(point, "soft", -1) for point in [*SOFT_LOCK_POINTS, "publish rename"]]
    # The builder dies while its DataLoader workers live on (for up to 5 s, until torch's
    # watchdog notices): they inherited the lock's file descriptor, the next run waits.
    + [(point, "fcntl", 2) for point in WORKER_POINTS]
)


@pytest.mark.slow
@pytest.mark.parametrize(("point", "lock", "parallel"), VARIANTS)
def test_crash_point_then_recovery(
    tmp_path: Path, cache_dir: Path, point: str, lock: str, parallel: int, shard_count: int
) -> None:
    env = {"SHARDCACHE_LOCK": lock}
    options = _crash_options(point, cache_dir, shard_count)
    delay = 0.005 if parallel > 0 else 0.0
    left = _crash(tmp_path, "crash", {"env": env, "parallel": parallel, "delay": delay, **options})
    # Published only once the staging directory, manifest last, was renamed into place.
    assert left["published"] == (point == "root fsync after publish")
    outcome = verify_recovery(tmp_path, "recover", REFERENCE, env=env, parallel=parallel)
    _record(f"{point} ({lock} lock, parallel={parallel})", {**left, **outcome})


@pytest.mark.slow
def test_crash_at_shard_rename_leaves_a_temp_file_that_is_never_trusted(tmp_path: Path) -> None:
    crash = {"event": "os.rename", "pattern": CRASH_POINTS["fourth shard rename"]["pattern"]}
    left = _crash(tmp_path, "crash", {"crash": {**crash, "nth": 4}})
    # The fourth shard was complete and fsynced under its temporary name, yet not renamed:
    # resume must delete it and decode its samples again.
    assert left["temp_files"] == 1
    assert left["staged_samples"] < N_ITEMS
    outcome = verify_recovery(tmp_path, "recover", REFERENCE)
    assert outcome["next_decodes"] == N_ITEMS - left["staged_samples"]


@pytest.mark.slow
def test_crash_in_a_resumed_build_then_recovery(tmp_path: Path) -> None:
    # The delay lets the writer thread finish shards before the loader's crash.
    first = _crash(tmp_path, "crash1", {"crash_at_decode": N_ITEMS // 4, "delay": 0.02})
    second = _crash(tmp_path, "crash2", {"crash_at_decode": N_ITEMS // 2, "delay": 0.02})
    # The resumed build reused the first one's shards and added its own before dying.
    assert 0 < first["staged_samples"] < second["staged_samples"] < N_ITEMS
    outcome = verify_recovery(tmp_path, "recover", REFERENCE)
    assert outcome["next_decodes"] == N_ITEMS - second["staged_samples"]


@pytest.mark.slow
def test_crash_while_discarding_a_damaged_cache(
    tmp_path: Path, decode_log: Path, cache_dir: Path
) -> None:
    ensure_cache(cache_dir, "train", make_items(), SlowLoader(decode_log))
    [path] = published(cache_dir)
    (path / "manifest.json").write_text("{ not json")
    # Dies between moving the damaged cache to .trash and deleting it.
    crash = {"event": "open", "pattern": r"^train-[0-9a-f]{24}\.[0-9a-f]{8} "}
    left = _crash(tmp_path, "crash", {"crash": crash})
    assert left["published"] == 0
    assert list((cache_dir / ".trash").iterdir()), "the crash should have left the trash full"
    verify_recovery(tmp_path, "recover", REFERENCE)
    assert list((cache_dir / ".trash").iterdir()) == [], "the next build should empty it"


@pytest.mark.slow
def test_a_dying_decoding_worker_fails_the_build_and_the_next_run_resumes(
    tmp_path: Path,
    cache_dir: Path,
) -> None:
    # parallel=2: the worker that reaches its 8th decode exits; the DataLoader notices.
    spec = child_spec(tmp_path, "crash", parallel=2, crash_at_decode=8, delay=0.002)
    child = fork_child(child_build, spec)
    assert child.wait() == 0
    result = child.result()
    # torch reports a dead worker as RuntimeError ("exited unexpectedly"), or, when the
    # worker dies while the parent receives a tensor's file descriptor from it, as the
    # ConnectionResetError of that transfer: timing decides which; either fails the build.
    assert (result["error"], "exited unexpectedly" in result["message"]) in {
        ("RuntimeError", True),
        ("ConnectionResetError", False),
    }
    assert not published(cache_dir)
    outcome = verify_recovery(tmp_path, "recover", REFERENCE)
    _record("decoding worker exits (parallel=2)", outcome)


@pytest.mark.slow
def test_sigkill_of_the_process_group_at_a_random_moment(tmp_path: Path, cache_dir: Path) -> None:
    """A fresh interpreter in its own session, with DataLoader workers, killed with -9.

    Then the resumed build, killed likewise (in a forkserver child with its own session,
    which starts in milliseconds), and a fresh process must recover.
    """
    import random

    rng = random.Random(1)
    ready = tmp_path / "ready"
    # Decoding takes at least 1 s (40 x 50 ms on two workers): kill it around mid-way.
    spec = child_spec(tmp_path, "build", parallel=2, delay=0.05, ready=str(ready))
    child = exec_child(child_build, spec)
    wait_for(ready)
    time.sleep(rng.uniform(0.3, 0.6))
    assert child.kill_group(), "the build finished before its kill"
    assert child.wait() == -signal.SIGKILL
    staged = staged_samples(cache_dir)
    assert not published(cache_dir)
    ready = tmp_path / "ready2"
    spec = child_spec(tmp_path, "resumed", parallel=2, delay=0.05, ready=str(ready), setsid=True)
    resumed = fork_child(child_build, spec)
    wait_for(ready)
    time.sleep(rng.uniform(0.1, 0.3))  # at least 16 samples, 0.4 s, are left to decode
    assert resumed.kill_group(), "the resumed build finished before its kill"
    assert resumed.wait() == -signal.SIGKILL
    assert staged_samples(cache_dir) >= staged
    expected = expected_decodes(cache_dir)
    outcome = verify_recovery(tmp_path, "recover", REFERENCE, parallel=2)
    assert outcome["next_decodes"] == expected
    _record("SIGKILL of a build's process group, then of the resumed build", outcome)


def test_stale_lock_and_staging_of_a_dead_process_do_not_block(
    tmp_path: Path, cache_dir: Path
) -> None:
    left = _crash(tmp_path, "crash", {"crash_at_decode": N_ITEMS // 2, "delay": 0.01})
    root = CacheRoot(cache_dir)
    assert left["staged_samples"] > 0
    assert list((root.path / ".locks").glob("*.lock")), "the dead builder's lock file is left"
    assert list((root.path / ".locks").glob("*.owner.json")), "and its owner file"
    # A lock that stayed held would end this run in LockTimeoutError after 10 s.
    result = verify_recovery(tmp_path, "next", REFERENCE, lock_timeout=10.0)
    assert result["next_decodes"] == N_ITEMS - left["staged_samples"]
