"""The random-kill loop: SIGKILL builds and resumed builds at seeded random moments.

``make soak`` runs the long version (``SHARDCACHE_SOAK_KILLS``, default 50 kills; set
``SHARDCACHE_SOAK_SEED`` to replay another schedule); ``make test`` runs 3 kills.
See `_fault_helpers.kill_loop` for what each streak checks.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from _fault_helpers import kill_loop


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
