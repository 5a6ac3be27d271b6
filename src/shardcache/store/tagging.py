"""Which directories are shardcache's: the Cache Directory Tagging standard.

A cache directory holds ``CACHEDIR.TAG`` (https://bford.info/cachedir/): backup tools skip
the directory, and shardcache's commands that remove anything (``clear``, ``prune``,
``verify --repair``) refuse a directory without it, so a slip such as ``--cache-dir ~``
removes nothing. A build tags the directory it uses when the directory holds nothing but
shardcache's own entries (new, or made before tags existed); a directory with other
files is never tagged (that would hide it from backups) and never cleared.
"""

from __future__ import annotations

import logging
import os
import stat

from .atomic import write_atomically
from .fs import Directory
from .layout import (
    CACHE_NAME,
    IDENTITY_NAME,
    LOCKS_DIR,
    MANIFEST_NAME,
    STAGING_DIR,
    TAG_NAME,
    TEAM_NAME,
    TRASH_DIR,
)

logger = logging.getLogger(__name__)

SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"
"""The first bytes of every CACHEDIR.TAG."""

TAG_TEXT = SIGNATURE + (
    b"\n# This file is a cache directory tag created by shardcache.\n"
    b"# For information about cache directory tags, see:\n"
    b"#\thttps://bford.info/cachedir/\n"
)

_OWN_DIRECTORIES = frozenset({STAGING_DIR, LOCKS_DIR, TRASH_DIR})


def is_tagged(root: Directory) -> bool:
    """Whether ``root`` holds a regular ``CACHEDIR.TAG`` that starts with the signature."""
    try:
        fd = root.open_file(TAG_NAME)
    except OSError:
        return False
    try:
        return os.read(fd, len(SIGNATURE)) == SIGNATURE
    finally:
        os.close(fd)


def _only_ours(root: Directory) -> bool:
    """Whether every entry of ``root`` is one shardcache makes (caches with a manifest)."""
    for name, mode in root.entries():
        if name in {TAG_NAME, TEAM_NAME, IDENTITY_NAME}:
            continue
        if not stat.S_ISDIR(mode):
            return False
        if name in _OWN_DIRECTORIES:
            continue
        if not CACHE_NAME.match(name):
            return False
        try:
            manifest = root.lstat(f"{name}/{MANIFEST_NAME}")
        except OSError:
            return False
        if not stat.S_ISREG(manifest.st_mode):
            return False
    return True


def ensure_tagged(root: Directory, *, quiet: bool = False) -> bool:
    """Tag ``root`` unless it is tagged; whether it is tagged now.

    Only a directory that holds nothing but shardcache's entries is tagged; another is
    logged (at debug level when ``quiet``).
    """
    if is_tagged(root):
        return True
    if not _only_ours(root):
        logger.log(
            logging.DEBUG if quiet else logging.WARNING,
            "not tagging %s as a cache directory: it holds files shardcache did not make "
            "(shardcache clear and prune will refuse it; use a directory of its own)",
            root.path,
        )
        return False
    try:
        write_atomically(root, TAG_NAME, TAG_TEXT, mode=0o644)
    except OSError as error:
        logger.debug("cannot tag %s: %s", root.path, error)
        return False
    return True
