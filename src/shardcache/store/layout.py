"""Where things live under a cache directory, and which directory that is.

::

    <cache_dir>/
      train-3f2a9c0d1e2f3a4b5c6d7e8f/      a published cache (see format.py)
      .staging/<key>/                      a build in progress, or one to resume
      .locks/<key>.lock, <key>.owner.json  build locks and who holds them
      .trash/                              caches being deleted (a rename, then rmtree)
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from os import PathLike
from pathlib import Path

import platformdirs

from .format import MANIFEST_NAME
from .key import KEY_CHARS_IN_NAME

ENVIRONMENT_VARIABLE = "SHARDCACHE_DIR"
CACHE_NAME = re.compile(rf"^(?P<subset>.+)-(?P<short>[0-9a-f]{{{KEY_CHARS_IN_NAME}}})$")


def resolve_cache_dir(cache_dir: str | PathLike[str] | None = None) -> Path:
    """``cache_dir``, else ``$SHARDCACHE_DIR``, else the user cache dir for "shardcache".

    Read at call time, so a variable set after import is honoured.
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from_environment = os.environ.get(ENVIRONMENT_VARIABLE)
    if from_environment:
        return Path(from_environment).expanduser()
    return Path(platformdirs.user_cache_dir("shardcache"))


def safe_subset_name(subset: str) -> str:
    """The subset's name as a directory-name prefix: letters, digits, ``._-`` only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", subset).strip(".") or "subset"


class CacheRoot:
    """Names of everything under one cache directory; creates nothing by itself."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def cache_name(self, subset: str, key: str) -> str:
        """``train-3f2a…``: the readable name of ``subset``'s cache for ``key``."""
        return f"{safe_subset_name(subset)}-{key[:KEY_CHARS_IN_NAME]}"

    def staging(self, key: str) -> Path:
        """The build directory of ``key``, on the same filesystem as the published caches."""
        return self.path / ".staging" / key

    def lock(self, key: str) -> Path:
        """The build lock file of ``key``."""
        return self.path / ".locks" / f"{key}.lock"

    def trash(self) -> Path:
        """Where caches go to be deleted, so no reader ever sees half a directory."""
        return self.path / ".trash"

    def published(self) -> Iterator[Path]:
        """Every directory that looks like a published cache, sorted by name."""
        try:
            entries = sorted(self.path.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if CACHE_NAME.match(entry.name) and (entry / MANIFEST_NAME).is_file():
                yield entry

    def find(self, key: str) -> Path | None:
        """A published cache of ``key`` under any subset's name, or None.

        Two subsets with identical items (say ``train`` and ``monitor-train``) share one.
        """
        suffix = f"-{key[:KEY_CHARS_IN_NAME]}"
        for entry in self.published():
            if entry.name.endswith(suffix):
                return entry
        return None
