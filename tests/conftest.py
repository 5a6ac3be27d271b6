"""Fixtures many tests set up; the helpers themselves are in ``tests/support/``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from shardcache.store import CacheDataset


@pytest.fixture
def decode_log(tmp_path: Path) -> Path:
    """Where the test's loaders log their decodes (see `support.decodes`)."""
    return tmp_path / "decodes.log"


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    """The test's cache directory, not created yet (a build creates it)."""
    return tmp_path / "cache"


@pytest.fixture
def cold_cache(tmp_path: Path, cache_dir: Path) -> Callable[[], CacheDataset]:
    """A 4-shard cache; calling the fixture drops its pages and opens it (`support.coldcache`)."""
    from support.coldcache import cold_cache_opener  # torch: imported by the tests that use it

    return cold_cache_opener(tmp_path, cache_dir)
