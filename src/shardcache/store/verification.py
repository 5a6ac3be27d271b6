"""Checks of a published cache: the cheap one at open, the full one of ``shardcache verify``.

`shard_size_problem` is the one size check (what opening a cache, ``list`` and ``verify``
use); `verify_cache` reads every byte: each shard's header against the manifest and its
xxh3-128 checksum.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import CorruptCacheError
from .format import Manifest, ShardInfo
from .fs import WrongKindError, lstat_regular
from .header import file_digest, read_header, size_problem
from .layout import MANIFEST_NAME


@dataclass(frozen=True)
class Problem:
    """A damaged file and what is wrong with it."""

    file: Path
    problem: str


def shard_size_problem(directory: Path, shard: ShardInfo) -> str | None:
    """What is wrong with the size of ``shard`` in ``directory`` (missing included), or None."""
    try:
        size = lstat_regular(directory / shard.file).st_size
    except FileNotFoundError:
        return "shard is missing"
    except WrongKindError as error:
        return f"shard is {error.found}, not a regular file"
    except OSError as error:
        return f"shard cannot be read: {error}"
    return size_problem(size, shard.bytes)


def first_size_problem(directory: Path, manifest: Manifest) -> Problem | None:
    """The first shard of ``manifest`` that is missing or of the wrong size, or None."""
    for shard in manifest.shards:
        problem = shard_size_problem(directory, shard)
        if problem is not None:
            return Problem(directory / shard.file, problem)
    return None


def without_path(error: CorruptCacheError, path: Path) -> str:
    """``error``'s message without the leading ``<path>: ``."""
    text = str(error)
    prefix = f"{error.path or path}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


class _DamageError(Exception):
    """One check of `verify_cache` failed (internal)."""


def _verify_shard(path: Path, manifest: Manifest, shard: ShardInfo) -> None:
    """Raise `_DamageError` (or OSError) saying what is wrong with one shard."""
    try:
        header = read_header(path, expected_bytes=shard.bytes)
    except CorruptCacheError as error:
        raise _DamageError(without_path(error, path)) from error
    if (header.start, header.stop) != (shard.start, shard.stop):
        raise _DamageError(
            f"holds samples [{header.start}, {header.stop}), the manifest says "
            f"[{shard.start}, {shard.stop})"
        )
    labels = tuple(record.get("label") for record in header.records)
    if labels != manifest.labels[shard.start : shard.stop]:
        raise _DamageError("its labels differ from the manifest's")
    digest = file_digest(path)
    if digest != shard.xxh3_128:
        raise _DamageError(
            f"checksum mismatch: the file's xxh3-128 is {digest}, "
            f"the manifest says {shard.xxh3_128}"
        )


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
        return None, [Problem(manifest_path, without_path(error, manifest_path))]
    problems: list[Problem] = []
    for shard in manifest.shards:
        shard_path = path / shard.file
        try:
            _verify_shard(shard_path, manifest, shard)
        except _DamageError as damage:
            problems.append(Problem(shard_path, str(damage)))
        except OSError as error:
            problems.append(Problem(shard_path, f"cannot be read: {error}"))
        progress(shard.bytes)
    return manifest, problems
