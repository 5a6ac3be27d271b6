"""The public surface: ``shardcache.__all__`` is pinned, and the store imports without Lightning."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest

import shardcache
from shardcache import errors

PUBLIC = [
    "BadSamplesError",
    "CacheDirError",
    "CacheError",
    "CachingDataModule",
    "ConfigurationError",
    "CorruptCacheError",
    "FingerprintError",
    "FormatVersionError",
    "InsufficientSpaceError",
    "LockTimeoutError",
    "PeerFailedError",
    "SampleError",
    "ShardCacheError",
    "SplitError",
    "__version__",
]


def test_all_is_pinned() -> None:
    assert shardcache.__all__ == PUBLIC


def test_every_exported_name_resolves() -> None:
    from shardcache.datamodule import CachingDataModule

    for name in PUBLIC:
        value = getattr(shardcache, name)
        if name == "CachingDataModule":
            assert value is CachingDataModule
        elif name != "__version__":
            assert value is getattr(errors, name)


def test_version_is_the_installed_one() -> None:
    assert shardcache.__version__ == importlib.metadata.version("shardcache")


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match=r"module 'shardcache' has no attribute 'Cache'"):
        shardcache.Cache  # noqa: B018 (the access is the test)


@pytest.mark.slow
def test_store_and_cli_import_without_lightning() -> None:
    code = (
        "import sys, shardcache, shardcache.store, shardcache.cli\n"
        "print(sorted({name.split('.')[0] for name in sys.modules}"
        " & {'lightning', 'pytorch_lightning', 'lightning_fabric', 'torchmetrics'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "[]", result.stderr
