"""What a cache directory holds: each cache's state, size, use and key.

An entry is one of:

``published``
    a complete cache, ``<subset>-<key[:24]>/`` with a valid manifest;
``damaged``
    a directory of that shape whose manifest is missing or fails its checks;
``building``
    a staging directory ``.staging/<key>/`` whose build lock a live process holds;
``stale staging``
    a staging directory nobody is building: an interrupted build, which the next build of
    the same key resumes, or ``shardcache clear`` removes.

Only what `is_ours` proves shardcache made is an entry: a directory named like a cache
(``upload-507f1f77bcf86cd799439011/``) without a manifest or lock of ours is not listed,
and so never removed. Nothing is followed through a symlink, nor read from a FIFO.
"""

from __future__ import annotations

import contextlib
import json
import logging
import stat
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..core.errors import CacheDirError, CorruptCacheError
from .format import FORMAT_NAME, MAX_MANIFEST_BYTES, Manifest
from .fs import Directory, read_regular
from .layout import (
    CACHE_NAME,
    KEY,
    KEY_CHARS_IN_NAME,
    LOCKS_DIR,
    MANIFEST_NAME,
    STAGING_DIR,
    CacheRoot,
    is_cache_file,
)
from .leases import lease_held
from .locking import build_in_progress
from .owners import read_owner
from .usage import directory_usage, last_used, timestamp
from .verification import first_size_problem, without_path

PUBLISHED = "published"
DAMAGED = "damaged"
BUILDING = "building"
STALE_STAGING = "stale staging"


@dataclass(frozen=True)
class CacheEntry:
    """One cache (or staging directory) found under a cache directory.

    Attributes:
        name: the directory name of a cache; for a staging directory, the name its build
            gives it when known, else the key's first 24 hex digits.
        state: `PUBLISHED`, `DAMAGED`, `BUILDING` or `STALE_STAGING`.
        key: the full key, when known.
        samples: the sample count (for a build, the count it is building), when known.
        size: bytes of all files in the directory.
        created: the manifest's creation time (a build's start), when known.
        last_used: when a run last opened it (for staging: its newest file).
        in_use: whether a live process has it open (None when unknown or not applicable).
        problem: why a damaged cache is damaged.
        owner: a build's owner record (pid, host, since, done, total).
    """

    name: str
    path: Path
    state: str
    key: str | None
    subset: str | None
    samples: int | None
    size: int
    created: datetime | None
    last_used: datetime | None
    in_use: bool | None = None
    manifest: Manifest | None = None
    problem: str | None = None
    owner: dict[str, Any] | None = None

    @property
    def is_staging(self) -> bool:
        """A staging directory (building or stale) rather than a published-looking one."""
        return self.state in {BUILDING, STALE_STAGING}


def _parse_time(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


logger = logging.getLogger(__name__)


def _manifest_key(path: Path, short: str) -> str | None:
    """The key a cache's manifest states, if it is a shardcache manifest of that name."""
    try:
        found = json.loads(read_regular(path / MANIFEST_NAME, MAX_MANIFEST_BYTES))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(found, dict) or found.get("format") != FORMAT_NAME:
        return None
    key = found.get("key")
    return key if isinstance(key, str) and KEY.match(key) and key.startswith(short) else None


def _key_for_short(root: Directory, short: str) -> str | None:
    """The full key of a damaged cache whose manifest is unreadable, from its lock file."""
    with contextlib.suppress(OSError), root.subdir(LOCKS_DIR) as locks:
        keys = {
            name.split(".")[0]
            for name, mode in locks.entries()
            if name.startswith(short) and name.endswith(".lock") and stat.S_ISREG(mode)
        }
        if len(keys) == 1 and KEY.match(key := keys.pop()):
            return key
    return None


def _holds_only_cache_files(root: Directory, name: str) -> bool:
    try:
        with root.subdir(name) as directory:
            # Names only: whatever their kind, removing them follows nothing (fs.remove_tree).
            return all(is_cache_file(entry) for entry, _ in directory.entries())
    except OSError:
        return False


def is_ours(root: Directory, path: Path) -> bool:
    """Whether shardcache made ``path``, a directory of the cache directory ``root``.

    A cache directory (``<subset>-<24 hex>``) is ours when its manifest says so (format
    ``shardcache``, a key that its name starts), or, when the manifest is lost, when a build
    lock of ours names its key and it holds only names a build writes. A staging
    directory is ours when it is a real directory ``.staging/<64 hex>``. Never a symlink.
    """
    parts = path.absolute().relative_to(root.path).parts
    if len(parts) == 2 and parts[0] == STAGING_DIR:
        if not KEY.match(parts[1]):
            return False
        try:
            with root.subdir(STAGING_DIR) as staging:
                return stat.S_ISDIR(staging.lstat(parts[1]).st_mode)
        except OSError:
            return False
    match = CACHE_NAME.match(path.name)
    if len(parts) != 1 or match is None:
        return False
    try:
        if not stat.S_ISDIR(root.lstat(path.name).st_mode):
            return False
    except OSError:
        return False
    if _manifest_key(path, match["short"]) is not None:
        return True
    return _key_for_short(root, match["short"]) is not None and _holds_only_cache_files(
        root, path.name
    )


def _in_use(names: CacheRoot, key: str | None) -> bool | None:
    return lease_held(None if key is None else names.lease(key))


def _damaged_entry(
    root: Directory, path: Path, subset: str, short: str, error: CorruptCacheError
) -> CacheEntry:
    """The entry of a cache whose manifest is missing or fails its checks."""
    key = _manifest_key(path, short) or _key_for_short(root, short)
    return CacheEntry(
        name=path.name,
        path=path,
        state=DAMAGED,
        key=key,
        subset=subset,
        samples=None,
        size=directory_usage(path)[0],
        created=None,
        last_used=last_used(path),
        in_use=_in_use(CacheRoot(root.path), key),
        problem=without_path(error, path / MANIFEST_NAME),
    )


def _published_entry(root: Directory, path: Path, subset: str, short: str) -> CacheEntry:
    try:
        manifest = Manifest.read(path / MANIFEST_NAME)
    except CorruptCacheError as error:
        return _damaged_entry(root, path, subset, short, error)
    found = first_size_problem(path, manifest)
    return CacheEntry(
        name=path.name,
        path=path,
        state=PUBLISHED if found is None else DAMAGED,
        key=manifest.key,
        subset=manifest.subset,
        samples=manifest.num_samples,
        size=directory_usage(path)[0],
        created=_parse_time(manifest.created),
        last_used=last_used(path),
        in_use=_in_use(CacheRoot(root.path), manifest.key),
        manifest=manifest,
        problem=None if found is None else f"{found.file.name}: {found.problem}",
    )


def _staging_entry(names: CacheRoot, path: Path) -> CacheEntry:
    key = path.name
    size, newest = directory_usage(path)
    building = build_in_progress(names.lock(key))
    owner = read_owner(names.owner(key)) if building else None
    name = owner.get("name") if owner else None
    total = owner.get("total") if owner else None
    return CacheEntry(
        name=name if isinstance(name, str) and name else key[:KEY_CHARS_IN_NAME],
        path=path,
        state=BUILDING if building else STALE_STAGING,
        key=key,
        subset=None,
        samples=total if isinstance(total, int) else None,
        size=size,
        created=_parse_time(owner.get("since")) if owner else None,
        last_used=timestamp(newest) if newest else None,
        owner=owner,
    )


def _staging_names(root: Directory) -> list[str]:
    """The staging directories of ``root``: none through a symlinked ``.staging``."""
    try:
        with root.subdir(STAGING_DIR) as staging:
            return [
                name for name, mode in staging.entries() if KEY.match(name) and stat.S_ISDIR(mode)
            ]
    except FileNotFoundError:
        return []
    except CacheDirError as error:
        logger.warning("not listing staging directories: %s", error)
        return []


def scan(cache_dir: Path) -> list[CacheEntry]:
    """Every cache and staging directory under ``cache_dir`` that shardcache made, by name."""
    try:
        root = Directory.open_root(cache_dir)
    except (FileNotFoundError, CacheDirError):
        return []
    entries: list[CacheEntry] = []
    with root:
        for name, mode in root.entries():
            match = CACHE_NAME.match(name)
            path = root.child(name)
            if match and stat.S_ISDIR(mode) and is_ours(root, path):
                entries.append(_published_entry(root, path, match["subset"], match["short"]))
        names = CacheRoot(root.path)
        entries.extend(
            _staging_entry(names, root.child(STAGING_DIR) / name) for name in _staging_names(root)
        )
    entries.sort(key=lambda entry: (entry.name, entry.is_staging))
    return entries


def label_counts(manifest: Manifest) -> dict[int | None, int]:
    """How many samples carry each label (None for unlabelled), ordered by label."""
    counts = Counter(manifest.labels)
    ordered = sorted(counts, key=lambda label: (label is None, label if label is not None else 0))
    return {label: counts[label] for label in ordered}
