"""Fixtures many tests set up; the helpers themselves are in ``tests/support/``."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def decode_log(tmp_path: Path) -> Path:
    """Where the test's loaders log their decodes (see `support.decodes`)."""
    return tmp_path / "decodes.log"


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    """The test's cache directory, not created yet (a build creates it)."""
    return tmp_path / "cache"
