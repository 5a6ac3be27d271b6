"""Make a cache directory a team directory, shared by the members of one group.

What ``shardcache share --group G DIR`` does (see `trust` for what a team directory trusts):

1. ``DIR``, ``.staging``, ``.locks`` and ``.trash`` get group ``G`` and mode ``2770``: the
   group reads and writes them, setgid hands ``G`` down to every entry made in them, other
   users get nothing.
2. The caches already there that the caller owns join the group: their directories
   ``2770``, their data files read-only (``0440``), ``last-used`` and lock files ``0660``.
3. ``DIR`` gets ``CACHEDIR.TAG`` and ``shardcache-team.json`` (the group, owned by ``DIR``'s
   owner, ``0644``): the mark that every member's shardcache trusts.

Only ``DIR``'s owner may run it, and only for a group they belong to.
"""

from __future__ import annotations

import grp
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import CacheDirError, ConfigurationError
from .atomic import write_atomically
from .fs import Directory
from .layout import (
    CACHE_NAME,
    LAST_USED_NAME,
    LOCKS_DIR,
    STAGING_DIR,
    TAG_NAME,
    TEAM_NAME,
    TRASH_DIR,
)
from .tagging import TAG_TEXT, is_tagged
from .trust import TEAM_DIRECTORY_MODE, TEAM_FILE_MODE, TEAM_PUBLISHED_MODE, user_name


@dataclass
class Shared:
    """What `share` did: the paths it changed and those it had to leave as they were."""

    directory: Path
    group: str
    gid: int
    changed: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _group(name: str) -> int:
    """The gid of group ``name``, which the caller must belong to (root excepted)."""
    try:
        gid = grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigurationError(f"there is no group {name!r} on this system") from None
    if os.geteuid() != 0 and gid != os.getegid() and gid not in os.getgroups():
        raise ConfigurationError(
            f"you ({user_name(os.geteuid())}) are not a member of group {name!r}: ask an "
            f"administrator to add you (e.g. `usermod -aG {name} {user_name(os.geteuid())}`)"
        )
    return gid


def _adopt(directory: Directory, mode: int, gid: int, result: Shared) -> None:
    """Give the open ``directory`` the team's group and ``mode``, if the caller owns it."""
    info = directory.stat()
    if info.st_uid != os.geteuid():
        result.skipped.append((directory.path, f"belongs to {user_name(info.st_uid)}"))
        return
    os.fchown(directory.fd, -1, gid)
    os.fchmod(directory.fd, mode)
    result.changed.append(directory.path)


def _adopt_files(directory: Directory, gid: int, result: Shared, *, locks: bool) -> None:
    """The team's group and mode for each regular file the caller owns in ``directory``."""
    for name, info in directory.walk_files():
        path = directory.child(name)
        if info.st_uid != os.geteuid():
            result.skipped.append((path, f"belongs to {user_name(info.st_uid)}"))
            continue
        fd = directory.open_file(name)
        try:
            os.fchown(fd, -1, gid)
            shared = locks or name == LAST_USED_NAME  # files every member changes
            os.fchmod(fd, TEAM_FILE_MODE if shared else TEAM_PUBLISHED_MODE)
        finally:
            os.close(fd)


def share(path: Path, group: str) -> Shared:
    """Make the cache directory ``path`` (created if missing) a team directory of ``group``.

    Raises:
        ConfigurationError: the group does not exist, or the caller is not a member.
        CacheDirError: ``path`` is not a directory the caller owns.
    """
    gid = _group(group)
    path = path.absolute()
    path.mkdir(parents=True, exist_ok=True)
    result = Shared(path, group, gid)
    with Directory.open_root(path) as root:
        owner = root.stat().st_uid
        if owner != os.geteuid() and os.geteuid() != 0:
            raise CacheDirError(
                f"{path} belongs to {user_name(owner)}: only its owner can make it a team directory"
            )
        _adopt(root, TEAM_DIRECTORY_MODE, gid, result)
        for name in (STAGING_DIR, LOCKS_DIR, TRASH_DIR):
            with root.subdir(name, create=True, mode=TEAM_DIRECTORY_MODE) as subdir:
                _adopt(subdir, TEAM_DIRECTORY_MODE, gid, result)
                if name == LOCKS_DIR:
                    _adopt_files(subdir, gid, result, locks=True)
                if name == STAGING_DIR:  # interrupted builds, for any member to resume
                    for key, mode in subdir.entries():
                        if stat.S_ISDIR(mode):
                            with subdir.subdir(key) as staged:
                                _adopt(staged, TEAM_DIRECTORY_MODE, gid, result)
                                _adopt_files(staged, gid, result, locks=True)
        for name, mode in root.entries():
            if not (CACHE_NAME.match(name) and stat.S_ISDIR(mode)):
                continue
            with root.subdir(name) as cache:
                _adopt(cache, TEAM_DIRECTORY_MODE, gid, result)
                if cache.stat().st_uid == os.geteuid():
                    _adopt_files(cache, gid, result, locks=False)
        if not is_tagged(root):
            write_atomically(root, TAG_NAME, TAG_TEXT, mode=0o644)
        team = json.dumps({"format": "shardcache-team", "group": group, "gid": gid}) + "\n"
        write_atomically(root, TEAM_NAME, team.encode(), mode=0o644)
    return result
