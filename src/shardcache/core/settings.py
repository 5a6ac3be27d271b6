"""Every ``SHARDCACHE_*`` environment variable: read at call time, parsed and checked here.

===========================  ==============================================================
``SHARDCACHE_DIR``           the cache directory when ``cache_dir`` is not given (default:
                             the user cache directory for "shardcache", e.g.
                             ``~/.cache/shardcache`` on Linux)
``SHARDCACHE_LOCK``          ``fcntl`` (default) or ``soft``: lock files instead of ``fcntl``
                             locks, for network filesystems where those hang; a waiter
                             removes a soft lock whose owner died on the same host
``SHARDCACHE_MMAP``          ``1`` (default) or ``0``: read samples with ``pread`` instead of
                             memory-mapping shards (for mounts where mmap is unreliable)
``SHARDCACHE_NATIVE``        ``1`` (default) or ``0``: assemble batches with the C loops of
                             ``shardcache.core._native`` (streaming copies, one-pass widening),
                             or with memmove and numpy (the same values; for comparison)
``SHARDCACHE_START_METHOD``  ``fork``, ``spawn`` or ``forkserver``: how decoding and
                             DataLoader workers start (default: ``spawn`` on macOS, the
                             platform's default elsewhere); ``spawn`` checks that a loader,
                             its samples and errors cross a process boundary by pickling
===========================  ==============================================================

Read at call time, never at import, so a variable set after ``import shardcache`` counts.
"""

from __future__ import annotations

import os
import sys
from os import PathLike
from pathlib import Path
from typing import Literal

from .errors import ConfigurationError

# multiprocessing and platformdirs are imported where they are needed: the command line
# imports this module and starts in ~0.1 s without them.

CACHE_DIR_VARIABLE = "SHARDCACHE_DIR"
LOCK_VARIABLE = "SHARDCACHE_LOCK"
MMAP_VARIABLE = "SHARDCACHE_MMAP"
NATIVE_VARIABLE = "SHARDCACHE_NATIVE"
START_METHOD_VARIABLE = "SHARDCACHE_START_METHOD"

LockKind = Literal["fcntl", "soft"]

DEFAULT_LOCK_TIMEOUT = 6 * 3600.0
"""Seconds a process waits for another's build of a cache: longer than any sane build."""


def default_cache_dir() -> Path:
    """The user cache directory for "shardcache", used when nothing else is set."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("shardcache"))


def cache_dir(explicit: str | PathLike[str] | None = None) -> Path:
    """``explicit``, else ``$SHARDCACHE_DIR``, else `default_cache_dir`."""
    if explicit is not None:
        return Path(explicit).expanduser()
    if from_environment := os.environ.get(CACHE_DIR_VARIABLE):
        return Path(from_environment).expanduser()
    return default_cache_dir()


def lock_kind() -> LockKind:
    """``fcntl`` (default) or ``soft``, from ``SHARDCACHE_LOCK``."""
    kind = os.environ.get(LOCK_VARIABLE, "").strip().lower() or "fcntl"
    if kind == "fcntl":
        return "fcntl"
    if kind == "soft":
        return "soft"
    raise ConfigurationError(f"{LOCK_VARIABLE}={kind!r}: expected 'fcntl' or 'soft'")


_TRUE = {"1", "true", "yes", ""}
_FALSE = {"0", "false", "no"}


def _switch(variable: str) -> bool:
    value = os.environ.get(variable, "1").strip().lower()
    if value not in _TRUE | _FALSE:
        raise ConfigurationError(f"{variable}={value!r}: expected 0 or 1")
    return value in _TRUE


def mmap_enabled() -> bool:
    """False when ``SHARDCACHE_MMAP=0`` asks for plain reads."""
    return _switch(MMAP_VARIABLE)


def native_enabled() -> bool:
    """False when ``SHARDCACHE_NATIVE=0`` asks for memmove and numpy instead of the C loops."""
    return _switch(NATIVE_VARIABLE)


def start_method() -> str | None:
    """The multiprocessing start method for workers, or None for the platform's default.

    Raises:
        ConfigurationError: ``SHARDCACHE_START_METHOD`` names a method this platform lacks.
    """
    method = os.environ.get(START_METHOD_VARIABLE, "").strip().lower()
    if method:
        import multiprocessing

        available = multiprocessing.get_all_start_methods()
        if method not in available:
            raise ConfigurationError(
                f"{START_METHOD_VARIABLE}={method!r}: expected one of {', '.join(available)}"
            )
        return method
    return "spawn" if sys.platform == "darwin" else None
