"""Whom a cache directory trusts: its user's own entries, or a team's.

Cache keys are predictable, so anyone who can write a cache directory could publish a
cache under the key another user is about to compute. Like pip with a cache it does not
own, shardcache does not use such a cache silently:

- The cache directory itself must not be writable by every user unless its sticky bit is
  set (as ``/tmp``'s is: then nobody can rename or remove another's entries).
- Every entry shardcache opens below it (a cache, ``.staging``, ``.locks``, ``.trash``)
  must be the user's own, writable by nobody else (group write is fine when the group is
  the user's own primary group, as with umask 002); anything else is a `CacheDirError`
  naming the path, its owner and mode, and the remedy.
- A **team directory** (made by its owner with ``shardcache share --group G DIR``, which
  writes `layout.TEAM_NAME`) trusts every entry of group ``G`` instead: the directories
  are ``2770`` (setgid: new entries get the group), published files read-only, locks
  group-writable. A cache another member built is verified in full (every checksum) the
  first time this user opens it; the result is remembered in the user's own state
  directory. Verification catches damage and partial copies, not a malicious member:
  the members of a team are trusted by definition.
"""

from __future__ import annotations

import grp
import hashlib
import json
import logging
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from ..core.errors import CacheDirError, CorruptCacheError
from .format import Manifest
from .fs import Directory
from .layout import MANIFEST_NAME, TEAM_NAME
from .verification import verify_cache

logger = logging.getLogger(__name__)

TEAM_DIRECTORY_MODE = 0o2770
"""Team directories: the group reads and writes, setgid hands the group down, others nothing."""

TEAM_FILE_MODE = 0o660
"""Team files that members change (locks, ``last-used``)."""

TEAM_PUBLISHED_MODE = 0o440
"""Published data files of a team directory: nobody changes a cache once it is published."""

PRIVATE_DIRECTORY_MODE = 0o755
"""Directories outside team mode: only the owner writes them, whatever the umask."""

MAX_TEAM_FILE_BYTES = 4096


def user_name(uid: int) -> str:
    """``alice`` for a uid with a name, else the number."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_name(gid: int) -> str:
    """``ml`` for a gid with a name, else the number."""
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _mode(info: os.stat_result) -> str:
    return f"{stat.S_IMODE(info.st_mode):04o}"


@dataclass(frozen=True)
class Policy:
    """What a cache directory trusts, and the modes of what shardcache creates in it.

    Attributes:
        root: the cache directory.
        team_gid: the team's group in a team directory, else None.
    """

    root: Path
    team_gid: int | None = None

    @property
    def directory_mode(self) -> int:
        """Mode of the directories a build creates."""
        return TEAM_DIRECTORY_MODE if self.team_gid is not None else PRIVATE_DIRECTORY_MODE

    @property
    def shared_file_mode(self) -> int | None:
        """Exact mode of files every member changes (locks, ``last-used``); None: umask."""
        return TEAM_FILE_MODE if self.team_gid is not None else None

    @property
    def published_mode(self) -> int | None:
        """Mode of a published cache's files; None: as written."""
        return TEAM_PUBLISHED_MODE if self.team_gid is not None else None

    def remedy(self) -> str:
        """What to do about an entry this policy refuses."""
        if self.team_gid is not None:
            return (
                f"{self.root} is a team directory of group {group_name(self.team_gid)}: its "
                f"entries must belong to that group (`chgrp -R {group_name(self.team_gid)}`), "
                "or remove the entry"
            )
        return (
            "use a cache directory of your own (cache_dir= or SHARDCACHE_DIR), or have the "
            f"owner of {self.root} make it a team directory: `shardcache share --group "
            f"GROUP --cache-dir {self.root}`"
        )

    def check(self, path: Path, info: os.stat_result) -> None:
        """Refuse ``path`` (a directory below the root) unless this policy trusts it."""
        problem = self.problem(info)
        if problem is not None:
            raise CacheDirError(f"{path} {problem}; {self.remedy()}")

    def problem(self, info: os.stat_result) -> str | None:
        """Why an entry with ``info`` is not trusted, or None."""
        described = f"(owner {user_name(info.st_uid)}, group {group_name(info.st_gid)}, mode "
        described += f"{_mode(info)})"
        if info.st_mode & stat.S_IWOTH:
            return f"is writable by every user {described}: anyone could replace what it holds"
        if self.team_gid is not None:
            if info.st_gid != self.team_gid and info.st_uid != os.geteuid():
                return f"is not in the team's group {described}"
            return None
        if info.st_uid != os.geteuid():
            return (
                f"belongs to {user_name(info.st_uid)} (uid {info.st_uid}), not to you "
                f"({user_name(os.geteuid())}) {described}: shardcache uses only what you built"
            )
        if info.st_mode & stat.S_IWGRP and info.st_gid != os.getegid():
            return f"is writable by group {group_name(info.st_gid)} {described}"
        return None


def _team_gid(root: Directory, info: os.stat_result) -> int | None:
    """The team group of a team directory, None elsewhere; refuses a marker it cannot trust."""
    if not root.exists(TEAM_NAME):
        return None
    marker = root.child(TEAM_NAME)
    fd = root.open_file(TEAM_NAME)
    try:
        marker_info = os.fstat(fd)
        text = os.read(fd, MAX_TEAM_FILE_BYTES)
    finally:
        os.close(fd)
    if marker_info.st_uid != info.st_uid or marker_info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CacheDirError(
            f"{marker} makes {root.path} a team directory, but it belongs to "
            f"{user_name(marker_info.st_uid)} with mode {_mode(marker_info)}: only the "
            f"directory's owner ({user_name(info.st_uid)}) may write it. Remove it, and have "
            "the owner run `shardcache share`"
        )
    try:
        gid = json.loads(text)["gid"]
    except (ValueError, KeyError, TypeError) as error:
        raise CacheDirError(f"{marker} is not a shardcache team file ({error!r})") from error
    if type(gid) is not int or info.st_gid != gid:
        raise CacheDirError(
            f"{marker} names group {gid!r}, but {root.path} belongs to group "
            f"{group_name(info.st_gid)}: run `shardcache share` again"
        )
    return gid


def policy_of(root: Directory) -> Policy:
    """The policy of the opened cache directory ``root``, after checking the root itself.

    Raises:
        CacheDirError: the root is writable by every user without the sticky bit, or its
            team file cannot be trusted.
    """
    info = root.stat()
    if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
        raise CacheDirError(
            f"cache directory {root.path} is writable by every user (mode {_mode(info)}) "
            "without the sticky bit: anyone could replace a cache in it. Run `chmod o-w` on "
            "it (or `chmod +t`, as /tmp has), or make it a team directory: `shardcache share "
            f"--group GROUP --cache-dir {root.path}`"
        )
    return Policy(root.path, _team_gid(root, info))


def open_trusted(path: Path) -> tuple[Directory, Policy]:
    """Open the cache directory ``path``: every directory below it checked by its policy."""
    root = Directory.open_root(path)
    try:
        policy = policy_of(root)
    except BaseException:
        root.close()
        raise
    root.check = policy.check
    return root, policy


# --- a teammate's cache, verified once per user ------------------------------------------------


def _record_path(key: str) -> Path:
    return Path(platformdirs.user_state_dir("shardcache")) / "verified" / f"{key}.json"


def _fingerprint(directory: Directory, manifest: Manifest) -> dict[str, Any]:
    """What a verification covered: the manifest's bytes and each shard's inode and size."""
    text = directory.read_bytes(MANIFEST_NAME)
    shards = {}
    for shard in manifest.shards:
        info = directory.lstat(shard.file)
        shards[shard.file] = [info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns]
    return {"manifest_sha256": hashlib.sha256(text).hexdigest(), "shards": shards}


def verify_first_use(directory: Directory, manifest: Manifest) -> None:
    """Check every checksum of a cache another user built, once per user and version of it.

    Raises:
        CorruptCacheError: a file fails its check; the message names it.
    """
    owner = directory.stat().st_uid
    if owner == os.geteuid():
        return
    record = _record_path(manifest.key)
    seen = _fingerprint(directory, manifest)
    try:
        if json.loads(record.read_text(encoding="utf-8")) == seen:
            return
    except (OSError, ValueError):
        pass
    logger.info(
        "verifying %s, built by %s, before its first use by %s",
        directory.path.name,
        user_name(owner),
        user_name(os.geteuid()),
    )
    _, problems = verify_cache(directory.path)
    if problems:
        first = problems[0]
        raise CorruptCacheError(
            f"{first.file}: {first.problem} (found verifying the cache {user_name(owner)} "
            f"built, before its first use by {user_name(os.geteuid())}). Tell its owner; "
            "`shardcache verify --repair` removes it, and the next run rebuilds it",
            path=first.file,
        )
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(seen), encoding="utf-8")
    except OSError as error:
        logger.debug("cannot remember the verification of %s: %s", directory.path, error)
