"""Every name under a cache directory, and which directory that is.

::

    <cache_dir>/
      train-3f2a9c0d1e2f3a4b5c6d7e8f/      a published cache:
        manifest.json                       written last; a reader trusts nothing without it
        items.json                          the split items, to explain a later cache miss
        shard-<start>-<stop>-<xxh3>.safetensors   samples [start, stop) and the file's xxh3-128
        last-used                           touched when a run opens the cache
      .shardcache-id                       this directory's identity: ranks that read the same
                                           one share the directory, whatever its path
      .staging/<key>/                      a build in progress, or one to resume
      .locks/<key>.lock                    the build lock of a key
      .locks/<key>.owner.json              who holds it: pid, host, since, progress
      .locks/<key>.lease                   shared flock of every process that has it open
      .locks/<key>.<job>.plan.json         a cooperative build: which samples each rank decodes
      .locks/<key>.<job>.<s>.slice         held by the rank building slice s (and .owner.json)
      .locks/<key>.<job>.<s>.done.json     slice s is written: its shards
      .locks/<key>.<job>.failed            why that job's build was abandoned (the first error)
      .trash/                              caches being deleted (a rename, then unlinks)
      CACHEDIR.TAG                         marks the directory as a cache (bford.info/cachedir)
      shardcache-team.json                 a team directory's group (``shardcache share``)

Nothing else in the store spells these names; this module creates nothing, and follows no
symlink (the store opens everything through `fs`).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from os import PathLike
from pathlib import Path

from ..core import settings

KEY_CHARS_IN_NAME = 24
"""Hex digits of the key in a cache directory's name (96 bits); the manifest keeps all 64."""

MANIFEST_NAME = "manifest.json"
ITEMS_NAME = "items.json"
LAST_USED_NAME = "last-used"
STAGING_DIR = ".staging"
LOCKS_DIR = ".locks"
TRASH_DIR = ".trash"
TEMPORARY_PREFIX = ".tmp-"
TAG_NAME = "CACHEDIR.TAG"
TEAM_NAME = "shardcache-team.json"
IDENTITY_NAME = ".shardcache-id"
"""The directory's identity: ranks that read the same one share the directory."""
JOB_FILE = re.compile(r"^(?P<key>[0-9a-f]{64})\.(?P<job>[0-9a-f]+)\.(?P<what>.+)$")
"""A cooperative build's file in ``.locks/``: ``<key>.<job>.plan.json``, ``...<s>.slice``..."""

CACHE_NAME = re.compile(rf"^(?P<subset>.+)-(?P<short>[0-9a-f]{{{KEY_CHARS_IN_NAME}}})$")
SHARD_NAME = re.compile(r"^shard-(\d{9})-(\d{9})-([0-9a-f]{32})\.safetensors$")
KEY = re.compile(r"^[0-9a-f]{64}$")
CACHE_FILES = frozenset({MANIFEST_NAME, ITEMS_NAME, LAST_USED_NAME})
"""The names a cache directory holds besides its shards and temporary files."""


def is_cache_file(name: str) -> bool:
    """Whether ``name`` is one shardcache writes in a cache or staging directory."""
    return name in CACHE_FILES or bool(SHARD_NAME.match(name)) or name.startswith(TEMPORARY_PREFIX)


def shard_name(start: int, stop: int, digest: str) -> str:
    """The file name of the shard holding samples ``[start, stop)`` with checksum ``digest``."""
    return f"shard-{start:09d}-{stop:09d}-{digest}.safetensors"


def shard_stem(start: int, stop: int) -> str:
    """The name a shard is written under before its checksum is known (as a temporary)."""
    return f"shard-{start:09d}-{stop:09d}"


def resolve_cache_dir(cache_dir: str | PathLike[str] | None = None) -> Path:
    """``cache_dir``, else ``$SHARDCACHE_DIR``, else the user cache dir for "shardcache"."""
    return settings.cache_dir(cache_dir)


def safe_subset_name(subset: str) -> str:
    """The subset's name as a directory-name prefix: letters, digits, ``._-`` only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", subset).strip(".") or "subset"


class CacheRoot:
    """Names of everything under one cache directory; creates nothing by itself."""

    def __init__(self, path: Path) -> None:
        self.path = path.absolute()  # resolved once: a later os.chdir changes nothing

    def cache_name(self, subset: str, key: str) -> str:
        """``train-3f2a…``: the readable name of ``subset``'s cache for ``key``."""
        return f"{safe_subset_name(subset)}-{key[:KEY_CHARS_IN_NAME]}"

    def staging_root(self) -> Path:
        """The directory holding every build's staging directory."""
        return self.path / STAGING_DIR

    def staging(self, key: str) -> Path:
        """The build directory of ``key``, on the same filesystem as the published caches."""
        return self.staging_root() / key

    def locks(self) -> Path:
        """The directory of lock, owner and lease files."""
        return self.path / LOCKS_DIR

    def lock(self, key: str) -> Path:
        """The build lock file of ``key``."""
        return self.locks() / f"{key}.lock"

    def owner(self, key: str) -> Path:
        """The file saying who holds ``key``'s build lock."""
        return self.locks() / f"{key}.owner.json"

    def lease(self, key: str) -> Path:
        """The lease file of ``key``: shared-locked by every process that has it open."""
        return self.locks() / f"{key}.lease"

    def identity(self) -> Path:
        """The file holding this directory's identity token (see `store.jobfiles`)."""
        return self.path / IDENTITY_NAME

    def trash(self) -> Path:
        """Where caches go to be deleted, so no reader ever sees half a directory."""
        return self.path / TRASH_DIR

    def published(self) -> Iterator[Path]:
        """Every directory that looks like a published cache, sorted by name.

        Real directories only (a symlink named like a cache is not one), each holding a
        regular ``manifest.json``; `Manifest.read` checks what it says.
        """
        try:
            with os.scandir(self.path) as scan:
                names = sorted(entry.name for entry in scan if CACHE_NAME.match(entry.name))
        except (FileNotFoundError, NotADirectoryError):
            return
        for name in names:
            entry = self.path / name
            try:
                if not stat.S_ISDIR(entry.lstat().st_mode):
                    continue
                if not stat.S_ISREG((entry / MANIFEST_NAME).lstat().st_mode):
                    continue
            except OSError:
                continue
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
