"""A build's staging directory: created safely, and scanned for what a build can resume from.

A shard under its final name in ``.staging/<key>/`` is complete (it was fsynced and renamed
there); an interrupted build leaves such shards, and the next build of the same key reuses
every one whose header and checksum still hold, and decodes only the samples they lack.
Anything else found there (a temporary file, a damaged shard, a symlink or FIFO named like
a shard) is removed, never followed or read.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

from ..core.errors import CorruptCacheError
from .format import ShardInfo
from .fs import Directory, WrongKindError
from .header import ShardHeader, descriptor_digest, read_header
from .layout import SHARD_NAME, TEMPORARY_PREFIX
from .tree import CacheTree

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StagedShard:
    """A complete shard in the staging directory: its manifest entry and parsed header."""

    info: ShardInfo
    header: ShardHeader


def make_staging(tree: CacheTree, key: str) -> Directory:
    """Create (or open) ``.staging/<key>``, never through a symlink.

    Another key's build removes ``.staging`` when it is empty (`ensure_cache` tidies up);
    if that lands between our creating it and creating ``<key>`` in it, try again.
    """
    for _ in range(10):
        try:
            return tree.staging(key, create=True)
        except FileNotFoundError:
            continue
    return tree.staging(key, create=True)


def _verified(staging: Directory, name: str, num_items: int) -> StagedShard | None:
    """The shard ``name`` if its header, range and checksum hold; else it is deleted."""
    match = SHARD_NAME.match(name)
    if match is None:
        return None
    start, stop, digest = int(match[1]), int(match[2]), match[3]
    path = staging.child(name)
    try:
        fd = staging.open_file(name)
    except WrongKindError as error:
        logger.warning("not resuming from %s: %s", path, error)
        staging.remove_tree(name)
        return None
    try:
        size = os.fstat(fd).st_size
        header = read_header(path, opened=(lambda offset, n: os.pread(fd, n, offset), size))
        if (header.start, header.stop) != (start, stop) or stop > num_items:
            raise CorruptCacheError(f"{path}: range does not match its name", path=path)
        if descriptor_digest(fd) != digest:
            raise CorruptCacheError(f"{path}: checksum does not match its name", path=path)
    except CorruptCacheError as error:
        logger.warning("not resuming from a damaged shard: %s", error)
        staging.unlink(name, missing_ok=True)
        return None
    finally:
        os.close(fd)
    return StagedShard(ShardInfo(name, start, stop, header.file_bytes, digest), header)


def staged_shard(staging: Directory, info: ShardInfo) -> StagedShard:
    """The shard another process wrote and listed as ``info``, its header read and checked.

    Its checksum is the one its writer computed (part of its name); a reader checks it.

    Raises:
        CorruptCacheError: the file is not what ``info`` says.
    """
    path = staging.child(info.file)
    match = SHARD_NAME.match(info.file)
    if match is None or (int(match[1]), int(match[2]), match[3]) != (
        info.start,
        info.stop,
        info.xxh3_128,
    ):
        raise CorruptCacheError(f"{path}: not the shard its done file lists", path=path)
    try:
        fd = staging.open_file(info.file)
    except (FileNotFoundError, WrongKindError) as error:
        raise CorruptCacheError(f"{path}: {error}", path=path) from error
    try:
        size = os.fstat(fd).st_size
        header = read_header(
            path,
            expected_bytes=info.bytes,
            opened=(lambda offset, n: os.pread(fd, n, offset), size),
        )
    finally:
        os.close(fd)
    if (header.start, header.stop) != (info.start, info.stop):
        raise CorruptCacheError(f"{path}: its samples are not those its done file lists", path=path)
    return StagedShard(info, header)


def reusable_shards(staging: Directory, num_items: int) -> list[StagedShard]:
    """Complete, checksum-verified shards of an interrupted build; others are deleted.

    The caller holds the build lock, and no member of a cooperative build writes here any
    more (`abandoned.end_abandoned_builds`; its own job's members start after its plan): every
    process that writes into a staging directory holds its build lock or a slice lock of
    it, so a temporary file here is a dead writer's.
    """
    found: list[StagedShard] = []
    for name, _ in staging.entries():
        if name.startswith(TEMPORARY_PREFIX):
            staging.remove_tree(name)
            continue
        shard = _verified(staging, name, num_items)
        if shard is not None:
            found.append(shard)
    kept: list[StagedShard] = []
    for shard in sorted(found, key=lambda s: s.info.start):
        if kept and shard.info.start < kept[-1].info.stop:
            staging.unlink(shard.info.file)  # overlaps a kept one: never serve twice
            continue
        kept.append(shard)
    return kept


def missing_indices(num_items: int, shards: Iterable[StagedShard]) -> list[int]:
    """The sample indices that no shard covers, in order."""
    covered = bytearray(num_items)
    for shard in shards:
        covered[shard.info.start : shard.info.stop] = b"\x01" * (shard.info.stop - shard.info.start)
    return [index for index, done in enumerate(covered) if not done]
