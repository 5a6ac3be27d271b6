"""What a cache directory holds: each cache's state, size and last use; leases; checks.

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

A process that has a cache open holds a *lease*: a shared ``flock`` on
``.locks/<key>.lease``, from `CacheDataset` creation until ``close()`` (or garbage
collection). ``shardcache prune`` removes a cache only while it holds that lock exclusively,
so it never deletes a cache a live process uses; ``shardcache clear`` removes it anyway, by a
rename and unlinks, which a process that already read from it survives (its mappings, or
open files without mmap, outlive the unlink).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import CorruptCacheError, LockTimeoutError
from .format import LAST_USED_NAME, MANIFEST_NAME, Manifest
from .layout import CACHE_NAME, CacheRoot
from .lock import BuildLock, describe_owner, lock_kind, read_owner
from .shardfile import file_digest, read_header

logger = logging.getLogger(__name__)

PUBLISHED = "published"
DAMAGED = "damaged"
BUILDING = "building"
STALE_STAGING = "stale staging"

LEASE_SUFFIX = ".lease"
LEASE_WAIT = 5.0
"""Seconds a new reader retries its shared lease while ``prune`` holds it for a removal."""


# --- leases ---------------------------------------------------------------------------------


def lease_path(root: Path, key: str) -> Path:
    """The lease file of cache ``key`` under the cache directory ``root``."""
    return root / ".locks" / f"{key}{LEASE_SUFFIX}"


class Lease:
    """A shared lock saying "a live process has this cache open"; see the module docstring.

    ``flock``, not ``fcntl``/``lockf`` record locks: a record lock is dropped when the
    process closes *any* descriptor of the file (so one ``shardcache list`` probe in the
    same process would end it), while an flock belongs to the open file description.
    Release only ever closes the descriptor, never ``LOCK_UN``: a forked DataLoader worker
    shares the description, and an unlock there would end the parent's lease too; a close
    ends the lock only when the last process holding the description lets go.
    """

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    @classmethod
    def take(cls, root: Path, key: str) -> Lease | None:
        """The lease of ``key``, or None where one cannot be had (best effort).

        None on a read-only cache directory, where ``.locks/`` is missing (a cache copied
        out of a cache directory: no stray directory is created beside it), and with
        ``SHARDCACHE_LOCK=soft`` (set for filesystems whose locks are unreliable). Reading
        such a cache still works; only ``prune`` cannot see that it is in use.
        """
        if lock_kind() == "soft":
            return None
        path = lease_path(root, key)
        try:
            # Read-only access suffices for flock, so users sharing a cache dir can lease.
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as error:
            logger.debug("no lease on %s: %s", path, error)
            return None
        deadline = time.monotonic() + LEASE_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return cls(fd, path)
            except OSError as error:
                # Contention means a prune is removing a cache right now: a rename, soon over.
                if error.errno not in {errno.EAGAIN, errno.EACCES} or time.monotonic() > deadline:
                    logger.debug("no lease on %s: %s", path, error)
                    os.close(fd)
                    return None
            time.sleep(0.01)

    def release(self) -> None:
        """Let go of the lease (closes the descriptor; idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __del__(self) -> None:
        self.release()

    def __reduce__(self) -> Any:
        raise TypeError("a Lease holds a file descriptor and cannot be pickled")


@contextlib.contextmanager
def exclusive_lease(root: Path, key: str | None) -> Iterator[bool]:
    """Hold ``key``'s lease exclusively for the block; yields False when a process holds it.

    While held, no process can open the cache (new readers wait up to `LEASE_WAIT`).
    """
    if key is None or lock_kind() == "soft":
        yield True
        return
    path = lease_path(root, key)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield True  # never opened since the lease file was last removed: nobody holds it
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in {errno.EAGAIN, errno.EACCES}:
                raise
            yield False
            return
        yield True
    finally:
        os.close(fd)


def lease_held(root: Path, key: str | None) -> bool | None:
    """Whether a live process has cache ``key`` open (None when it cannot be told)."""
    try:
        with exclusive_lease(root, key) as free:
            return not free
    except OSError:
        return None


# --- the inventory --------------------------------------------------------------------------


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


def _timestamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def _parse_time(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _directory_usage(path: Path) -> tuple[int, float]:
    """Total bytes of the files in ``path`` and the newest modification time (flat dirs)."""
    total, newest = 0, 0.0
    try:
        newest = path.stat().st_mtime
        with os.scandir(path) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    info = entry.stat(follow_symlinks=False)
                    if entry.is_file(follow_symlinks=False):
                        total += info.st_size
                    newest = max(newest, info.st_mtime)
    except OSError:
        pass
    return total, newest


def _last_used(path: Path) -> datetime | None:
    """The ``last-used`` marker's time, else the manifest's (a cache never opened since)."""
    for name in (LAST_USED_NAME, MANIFEST_NAME):
        with contextlib.suppress(OSError):
            return _timestamp((path / name).stat().st_mtime)
    return None


def _key_for_short(root: CacheRoot, short: str) -> str | None:
    """The full key of a damaged cache whose manifest is unreadable, from its lock file."""
    with contextlib.suppress(OSError):
        keys = {p.name.split(".")[0] for p in (root.path / ".locks").glob(f"{short}*.lock")}
        if len(keys) == 1:
            return keys.pop()
    return None


def _published_entry(root: CacheRoot, path: Path, subset: str, short: str) -> CacheEntry:
    size, _ = _directory_usage(path)
    try:
        manifest = Manifest.read(path / MANIFEST_NAME)
    except CorruptCacheError as error:
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
            size=size,
            created=None,
            last_used=_last_used(path),
            in_use=lease_held(root.path, key),
            problem=_without_path(error, path / MANIFEST_NAME),
        )
    problem = _missing_or_resized_shard(path, manifest)
    return CacheEntry(
        name=path.name,
        path=path,
        state=PUBLISHED if problem is None else DAMAGED,
        key=manifest.key,
        subset=manifest.subset,
        samples=manifest.num_samples,
        size=size,
        created=_parse_time(manifest.created),
        last_used=_last_used(path),
        in_use=lease_held(root.path, manifest.key),
        manifest=manifest,
        problem=problem,
    )


def _missing_or_resized_shard(path: Path, manifest: Manifest) -> str | None:
    """The first shard that is missing or of the wrong size (what opening checks), or None."""
    for shard in manifest.shards:
        try:
            size = (path / shard.file).stat().st_size
        except OSError:
            return f"{shard.file}: shard is missing"
        if size != shard.bytes:
            return f"{shard.file}: shard is {size} bytes, the manifest says {shard.bytes}"
    return None


def build_in_progress(root: CacheRoot, key: str) -> bool:
    """Whether a live process holds the build lock of ``key`` (a non-blocking attempt)."""
    lock_path = root.lock(key)
    if not lock_path.exists():
        return False
    try:
        with BuildLock(lock_path, key[:24], timeout=0):
            return False
    except LockTimeoutError:
        return True
    except OSError:
        return False  # a read-only cache directory: nobody can be building there


def _staging_entry(root: CacheRoot, path: Path) -> CacheEntry:
    key = path.name
    size, newest = _directory_usage(path)
    building = build_in_progress(root, key)
    owner = read_owner(root.lock(key).with_suffix(".owner.json")) if building else None
    name = owner.get("name") if owner else None
    total = owner.get("total") if owner else None
    return CacheEntry(
        name=name if isinstance(name, str) and name else key[:24],
        path=path,
        state=BUILDING if building else STALE_STAGING,
        key=key,
        subset=None,
        samples=total if isinstance(total, int) else None,
        size=size,
        created=_parse_time(owner.get("since")) if owner else None,
        last_used=_timestamp(newest) if newest else None,
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
    staging_dir = cache_dir / ".staging"
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        entries.extend(
            _staging_entry(root, path)
            for path in sorted(staging_dir.iterdir())
            if path.is_dir() and not path.is_symlink()
        )
    entries.sort(key=lambda entry: (entry.name, entry.is_staging))
    return entries


def label_counts(manifest: Manifest) -> dict[int | None, int]:
    """How many samples carry each label (None for unlabelled), ordered by label."""
    counts = Counter(manifest.labels)
    ordered = sorted(counts, key=lambda label: (label is None, label if label is not None else 0))
    return {label: counts[label] for label in ordered}


# --- checks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """A damaged file and what is wrong with it."""

    file: Path
    problem: str


def _without_path(error: CorruptCacheError, path: Path) -> str:
    text = str(error)
    prefix = f"{error.path or path}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


def verify_cache(
    path: Path, progress: Callable[[int], object] = lambda _: None
) -> tuple[Manifest | None, list[Problem]]:
    """Check a published cache completely: the manifest, every shard's header and checksum.

    Args:
        path: the cache directory.
        progress: called with the bytes of each shard once it is checked.

    Returns:
        The manifest (None when it is unusable) and every problem found, one per file.
    """
    manifest_path = path / MANIFEST_NAME
    try:
        manifest = Manifest.read(manifest_path)
    except CorruptCacheError as error:
        return None, [Problem(manifest_path, _without_path(error, manifest_path))]
    problems: list[Problem] = []
    for shard in manifest.shards:
        shard_path = path / shard.file
        try:
            try:
                header = read_header(shard_path, expected_bytes=shard.bytes)
            except CorruptCacheError as error:
                raise _DamageError(_without_path(error, shard_path)) from error
            if (header.start, header.stop) != (shard.start, shard.stop):
                raise _DamageError(
                    f"holds samples [{header.start}, {header.stop}), the manifest says "
                    f"[{shard.start}, {shard.stop})"
                )
            labels = tuple(record.get("label") for record in header.records)
            if labels != manifest.labels[shard.start : shard.stop]:
                raise _DamageError("its labels differ from the manifest's")
            digest = file_digest(shard_path)
            if digest != shard.xxh3_128:
                raise _DamageError(
                    f"checksum mismatch: the file's xxh3-128 is {digest}, "
                    f"the manifest says {shard.xxh3_128}"
                )
        except _DamageError as damage:
            problems.append(Problem(shard_path, str(damage)))
        except OSError as error:
            problems.append(Problem(shard_path, f"cannot be read: {error}"))
        progress(shard.bytes)
    return manifest, problems


class _DamageError(Exception):
    """One check of `verify_cache` failed (internal)."""


# --- removal --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Removal:
    """What became of one entry that was asked to go.

    Attributes:
        removed: it is gone (renamed out of sight and deleted).
        reason: why it was kept, when it was.
    """

    removed: bool
    reason: str | None = None


def _why_building(root: CacheRoot, key: str) -> str:
    owner = read_owner(root.lock(key).with_suffix(".owner.json"))
    return f"a build is in progress ({describe_owner(owner)})"


def remove(cache_dir: Path, entry: CacheEntry, *, respect_leases: bool) -> Removal:
    """Remove ``entry`` under its build lock, unless a build of it is in progress.

    The directory is renamed into ``.trash/`` and then deleted: files are unlinked, never
    truncated, so a process that has the shards mapped keeps reading them.

    Args:
        cache_dir: the cache directory.
        entry: what to remove.
        respect_leases: keep it when a live process has it open (``prune``); otherwise
            (``clear``) remove it all the same.
    """
    from .cache import discard  # cache imports the reader, which imports this module

    root = CacheRoot(cache_dir)
    lock: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    if entry.key is not None:
        lock = BuildLock(root.lock(entry.key), entry.name, timeout=0)
    try:
        with lock, exclusive_lease(cache_dir, entry.key if respect_leases else None) as free:
            if not free:
                return Removal(False, "in use by a running process")
            try:
                discard(root, entry.path)
            except FileNotFoundError:
                return Removal(True)  # someone else removed it meanwhile
    except LockTimeoutError:
        return Removal(False, _why_building(root, entry.key or ""))
    except OSError as error:
        return Removal(False, f"cannot be removed: {error}")
    # The empty .staging/ stays: removing it could race with a build creating its own
    # directory inside it.
    return Removal(True)


def empty_trash(cache_dir: Path) -> int:
    """Delete what interrupted removals left in ``.trash/``; return the bytes freed."""
    trash = CacheRoot(cache_dir).trash()
    freed = 0
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for path in sorted(trash.iterdir()):
            if path.is_dir() and not path.is_symlink():
                freed += _directory_usage(path)[0]
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    freed += path.lstat().st_size
                    path.unlink()
    return freed
