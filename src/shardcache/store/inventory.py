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
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..core.errors import CorruptCacheError
from .format import Manifest
from .layout import CACHE_NAME, KEY_CHARS_IN_NAME, MANIFEST_NAME, CacheRoot
from .locking import build_in_progress, lease_held, read_owner
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


def _key_for_short(root: CacheRoot, short: str) -> str | None:
    """The full key of a damaged cache whose manifest is unreadable, from its lock file."""
    with contextlib.suppress(OSError):
        keys = {p.name.split(".")[0] for p in root.locks().glob(f"{short}*.lock")}
        if len(keys) == 1:
            return keys.pop()
    return None


def _in_use(root: CacheRoot, key: str | None) -> bool | None:
    return lease_held(None if key is None else root.lease(key))


def _damaged_entry(
    root: CacheRoot, path: Path, subset: str, short: str, error: CorruptCacheError
) -> CacheEntry:
    """The entry of a cache whose manifest is missing or fails its checks."""
    key = None
    with contextlib.suppress(OSError, ValueError, AttributeError):
        found = json.loads((path / MANIFEST_NAME).read_text(encoding="utf-8")).get("key")
        key = found if isinstance(found, str) and found.startswith(short) else None
    key = key or _key_for_short(root, short)
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
        in_use=_in_use(root, key),
        problem=without_path(error, path / MANIFEST_NAME),
    )


def _published_entry(root: CacheRoot, path: Path, subset: str, short: str) -> CacheEntry:
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
        in_use=_in_use(root, manifest.key),
        manifest=manifest,
        problem=None if found is None else f"{found.file.name}: {found.problem}",
    )


def _staging_entry(root: CacheRoot, path: Path) -> CacheEntry:
    key = path.name
    size, newest = directory_usage(path)
    building = build_in_progress(root.lock(key))
    owner = read_owner(root.owner(key)) if building else None
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


def scan(cache_dir: Path) -> list[CacheEntry]:
    """Every cache and staging directory under ``cache_dir``, sorted by name."""
    root = CacheRoot(cache_dir)
    entries: list[CacheEntry] = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for path in sorted(cache_dir.iterdir()):
            match = CACHE_NAME.match(path.name)
            if match and path.is_dir() and not path.is_symlink():
                entries.append(_published_entry(root, path, match["subset"], match["short"]))
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        entries.extend(
            _staging_entry(root, path)
            for path in sorted(root.staging_root().iterdir())
            if path.is_dir() and not path.is_symlink()
        )
    entries.sort(key=lambda entry: (entry.name, entry.is_staging))
    return entries


def label_counts(manifest: Manifest) -> dict[int | None, int]:
    """How many samples carry each label (None for unlabelled), ordered by label."""
    counts = Counter(manifest.labels)
    ordered = sorted(counts, key=lambda label: (label is None, label if label is not None else 0))
    return {label: counts[label] for label in ordered}
