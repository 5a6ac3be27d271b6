"""Processes racing to build: one decode per item in total, and locks that say who holds them.

Children start together at a file barrier and build the same key (or two keys) in one empty
cache directory; the build lock must make exactly one of them decode each item, and all of
them read the same samples. A waiter has its own deadline (``lock_timeout``) and its log
line and error say who holds the lock: pid, host, since when, and how far the build got.
"""

from __future__ import annotations

import logging
import re
import socket
from pathlib import Path

import pytest

from shardcache.errors import LockTimeoutError
from shardcache.store import ensure_cache
from support.builds import child_build, child_spec, hold_lock, leftovers, published, run_build
from support.decodes import decode_count, decodes
from support.loaders import N_ITEMS, SlowLoader, make_items, reference_digest
from support.processes import fork_child, wait_for

REFERENCE = reference_digest(make_items())


def _race(tmp_path: Path, specs: list[dict]) -> list[dict]:
    barrier = tmp_path / "barrier"
    children = [
        fork_child(child_build, {**spec, "barrier": str(barrier), "parties": len(specs)})
        for spec in specs
    ]
    codes = [child.wait() for child in children]
    assert codes == [0] * len(specs)
    return [child.result() for child in children]


@pytest.mark.slow
@pytest.mark.parametrize(("parties", "parallel"), [(8, -1), (4, 2)])
def test_racing_processes_decode_each_item_once(
    tmp_path: Path, decode_log: Path, cache_dir: Path, parties: int, parallel: int
) -> None:
    specs = [child_spec(tmp_path, f"p{i}", parallel=parallel, delay=0.002) for i in range(parties)]
    results = _race(tmp_path, specs)
    assert [result.get("error") for result in results] == [None] * parties
    assert (decode_count(decode_log), len(published(cache_dir))) == (
        N_ITEMS,
        1,
    )
    assert {result["digest"] for result in results} == {REFERENCE}
    # One process decoded everything; the others waited and opened its cache.
    builders = {decode.tag for decode in decodes(decode_log)}
    assert len(builders) == 1
    assert leftovers(cache_dir) == []


@pytest.mark.slow
def test_two_keys_built_concurrently_in_one_directory(
    tmp_path: Path, decode_log: Path, cache_dir: Path
) -> None:
    specs = [
        child_spec(tmp_path, f"{prefix}{i}", prefix=prefix, delay=0.002)
        for i in range(3)
        for prefix in ("img", "scan")
    ]
    results = _race(tmp_path, specs)
    assert [result.get("error") for result in results] == [None] * len(specs)
    assert decode_count(decode_log) == 2 * N_ITEMS
    by_prefix = {
        prefix: {
            result["digest"]
            for spec, result in zip(specs, results, strict=True)
            if spec["prefix"] == prefix
        }
        for prefix in ("img", "scan")
    }
    assert by_prefix == {
        "img": {REFERENCE},
        "scan": {reference_digest(make_items(prefix="scan"))},
    }
    assert len(published(cache_dir)) == 2
    assert not (cache_dir / ".staging").exists() or not list((cache_dir / ".staging").iterdir())


def test_a_build_survives_another_keys_tidy_up_of_the_staging_parent(
    tmp_path: Path, cache_dir: Path
) -> None:
    """The window between creating ``.staging`` and ``.staging/<key>``, held open.

    B pauses after creating ``.staging`` (its first mkdir of its own directory failed for
    want of the parent), A builds another key from start to end meanwhile and removes the
    then empty ``.staging`` as it tidies up; B must still build.
    """
    paused, resume = tmp_path / "b-paused", tmp_path / "b-resume"
    pause = {
        "event": "os.mkdir",
        "pattern": r"^[0-9a-f]{64} ",
        "nth": 1,
        "paused": str(paused),
        "resume": str(resume),
    }
    b = fork_child(child_build, child_spec(tmp_path, "b", prefix="scan", pause=pause))
    wait_for(paused)
    a = run_build(child_spec(tmp_path, "a"))
    assert a.get("error") is None
    assert not (cache_dir / ".staging").exists(), "A did not tidy up; no race here"
    resume.touch()
    assert b.wait() == 0
    result = b.result()
    assert result.get("error") is None, result
    assert result["digest"] == reference_digest(make_items(prefix="scan"))


def _holder(tmp_path: Path, progress: tuple[int, int]) -> tuple[object, Path]:
    release = tmp_path / "release"
    spec = child_spec(
        tmp_path, "holder", ready=str(tmp_path / "held"), release=str(release), progress=progress
    )
    child = fork_child(hold_lock, spec)
    wait_for(tmp_path / "held")
    return child, release


def test_lock_timeout_says_who_holds_the_lock(
    tmp_path: Path, decode_log: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    holder, release = _holder(tmp_path, (5, N_ITEMS))
    caplog.set_level(logging.WARNING, logger="shardcache")
    loader = SlowLoader(decode_log, tag="waiter")
    try:
        with pytest.raises(LockTimeoutError) as caught:
            ensure_cache(cache_dir, "train", make_items(), loader, lock_timeout=1.0)
    finally:
        release.touch()
        assert holder.wait() == 0
    message = str(caught.value)
    host = re.escape(socket.gethostname())
    assert re.search(
        rf"gave up after 1 s waiting for the build of train-[0-9a-f]{{24}}: lock \S+\.lock is "
        rf"held by pid {holder.pid} on host {host} since \d{{4}}-\d\d-\d\dT\S+ "
        rf"\(5/{N_ITEMS} samples\)",
        message,
    ), message
    # The waiter said so at once, not only when it gave up.
    waits = [r for r in caplog.records if r.levelno == logging.WARNING and "waiting" in r.message]
    assert waits, "no WARNING line while waiting"
    assert f"pid {holder.pid} on host {socket.gethostname()}" in waits[0].message
    assert re.search(r"building train-[0-9a-f]{24}", waits[0].message)
    assert decode_count(decode_log) == 0
    # Released: the same call builds.
    dataset = ensure_cache(cache_dir, "train", make_items(), loader, lock_timeout=1.0)
    assert len(dataset) == N_ITEMS


@pytest.mark.slow
def test_a_waiter_logs_the_builders_progress_then_opens_its_cache(
    tmp_path: Path, decode_log: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ready = tmp_path / "ready"
    builder = fork_child(child_build, child_spec(tmp_path, "builder", delay=0.05, ready=str(ready)))
    wait_for(ready)
    wait_for(decode_log)  # it holds the lock and decodes
    caplog.set_level(logging.WARNING, logger="shardcache")
    loader = SlowLoader(decode_log, tag="waiter")
    dataset = ensure_cache(cache_dir, "train", make_items(), loader, lock_timeout=60)
    assert len(dataset) == N_ITEMS
    assert builder.wait() == 0
    assert decode_count(decode_log, "waiter") == 0
    assert decode_count(decode_log, "builder") == N_ITEMS
    waits = [r.message for r in caplog.records if "waiting for pid" in r.message]
    assert waits
    assert waits[0].startswith(f"waiting for pid {builder.pid} on host ")
