"""The random-kill loop: SIGKILL builds and resumed builds at seeded random moments.

``make soak`` runs the long version (``SHARDCACHE_SOAK_KILLS``, default 50 kills; set
``SHARDCACHE_SOAK_SEED`` to replay another schedule); ``make test`` runs 3 kills.
See `kill_loop` for what each streak checks.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest

from support.builds import child_build, child_spec, published, staged_samples, verify_recovery
from support.loaders import N_ITEMS, make_items, reference_digest
from support.processes import fork_child, wait_for


def kill_loop(workdir: Path, kills: int, seed: int, delay: float = 0.01) -> dict[str, int]:
    """SIGKILL builds (and resumed builds) at seeded random moments; verify after each streak.

    Each build runs in a session of its own with ``parallel`` -1 or 2, so that the kill
    takes its DataLoader workers too. After a streak of one to three kills on the same
    directory (the later ones hit resumed builds), a fresh process must serve the reference
    samples exactly, and the run after it must decode nothing; then the directory is wiped.

    Returns:
        counts: ``kills`` delivered, ``resumed_kills`` (of a build that had shards to
        resume), ``killed_after_publish`` (the cache was complete when the kill landed),
        builds that ``finished`` before their kill time, ``verified`` recoveries.
    """
    rng = random.Random(seed)
    reference = reference_digest(make_items())
    counts = dict.fromkeys(
        ["kills", "resumed_kills", "killed_after_publish", "finished", "verified"], 0
    )
    attempt = 0
    streak = rng.randint(1, 3)
    while counts["kills"] < kills:
        attempt += 1
        assert attempt < 4 * kills + 10, counts
        cache_dir = workdir / "cache"
        had_staging = staged_samples(cache_dir) > 0
        ready = workdir / f"ready-{attempt}"
        parallel = rng.choice([-1, 2])
        spec = child_spec(
            workdir,
            f"kill{attempt}",
            setsid=True,
            ready=str(ready),
            delay=delay,
            parallel=parallel,
        )
        # Kill within about the time the decoding left should take, and a little after:
        # most kills land inside the build, some in its last steps or once it is done.
        decoding = (N_ITEMS - staged_samples(cache_dir)) * delay / (2 if parallel > 0 else 1)
        moment = rng.uniform(0.0, 1.2 * decoding + 0.1)
        child = fork_child(child_build, spec)
        wait_for(ready)
        time.sleep(moment)
        killed = child.kill_group() and child.wait() == -signal.SIGKILL
        if not killed:
            child.wait()
            counts["finished"] += 1
        done = bool(published(cache_dir))
        if killed:
            counts["kills"] += 1
            counts["resumed_kills"] += had_staging
            counts["killed_after_publish"] += done
            streak -= 1
        # A published cache ends the streak: the next build would have nothing to do.
        if done or streak <= 0 or counts["kills"] >= kills:
            verify_recovery(workdir, f"verify{attempt}", reference)
            counts["verified"] += 1
            shutil.rmtree(cache_dir)
            streak = rng.randint(1, 3)
    return counts


@pytest.mark.slow
def test_three_random_kills(tmp_path: Path) -> None:
    counts = kill_loop(tmp_path, kills=3, seed=3)
    assert counts["kills"] == 3
    assert counts["verified"] >= 1


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_soak_random_kills(tmp_path: Path) -> None:
    kills = int(os.environ.get("SHARDCACHE_SOAK_KILLS", "50"))
    seed = int(os.environ.get("SHARDCACHE_SOAK_SEED", "20240611"))
    counts = kill_loop(tmp_path, kills=kills, seed=seed)
    print(f"soak: {counts}")
    assert counts["kills"] == kills
    assert counts["resumed_kills"] > 0, "no kill hit a resumed build"
