"""A build's staging directory: created safely, and scanned for what a build can resume from.

A shard under its final name in ``.staging/<key>/`` is complete (it was fsynced and renamed
there); an interrupted build leaves such shards, and the next build of the same key reuses
every one whose header and checksum still hold, and decodes only the samples they lack.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import CorruptCacheError
from .format import ShardInfo
from .header import ShardHeader, file_digest, read_header
from .layout import SHARD_NAME, TEMPORARY_PREFIX

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StagedShard:
    """A complete shard in the staging directory: its manifest entry and parsed header."""

    info: ShardInfo
    header: ShardHeader


def make_staging(staging: Path) -> None:
    """Create ``staging`` and its parent, ``.staging``.

    Another key's build removes ``.staging`` when it is empty (`ensure_cache` tidies up);
    if that lands between our creating it and creating ``staging`` in it, try again.
    """
    for _ in range(10):
        try:
            staging.mkdir(parents=True, exist_ok=True)
        except FileNotFoundError:
            continue
        return
    staging.mkdir(parents=True, exist_ok=True)


def _verified(path: Path, num_items: int) -> StagedShard | None:
    """The shard at ``path`` if its header, range and checksum hold; else it is deleted."""
    match = SHARD_NAME.match(path.name)
    if match is None:
        return None
    start, stop, digest = int(match[1]), int(match[2]), match[3]
    try:
        header = read_header(path)
        if (header.start, header.stop) != (start, stop) or stop > num_items:
            raise CorruptCacheError(f"{path}: range does not match its name", path=path)
        if file_digest(path) != digest:
            raise CorruptCacheError(f"{path}: checksum does not match its name", path=path)
    except CorruptCacheError as error:
        logger.warning("not resuming from a damaged shard: %s", error)
        path.unlink()
        return None
    return StagedShard(ShardInfo(path.name, start, stop, header.file_bytes, digest), header)


def reusable_shards(staging: Path, num_items: int) -> list[StagedShard]:
    """Complete, checksum-verified shards of an interrupted build; others are deleted.

    The caller holds the build lock, and no member of a cooperative build writes here any
    more (`slices.end_abandoned_builds`; its own job's members start after its plan): every
    process that writes into a staging directory holds its build lock or a slice lock of
    it, so a temporary file here is a dead writer's.
    """
    found: list[StagedShard] = []
    for path in sorted(staging.iterdir()):
        if path.name.startswith(TEMPORARY_PREFIX):
            path.unlink()
            continue
        shard = _verified(path, num_items)
        if shard is not None:
            found.append(shard)
    kept: list[StagedShard] = []
    for shard in sorted(found, key=lambda s: s.info.start):
        if kept and shard.info.start < kept[-1].info.stop:
            (staging / shard.info.file).unlink()  # overlaps a kept one: never serve twice
            continue
        kept.append(shard)
    return kept


def missing_indices(num_items: int, shards: Iterable[StagedShard]) -> list[int]:
    """The sample indices that no shard covers, in order."""
    covered = bytearray(num_items)
    for shard in shards:
        covered[shard.info.start : shard.info.stop] = b"\x01" * (shard.info.stop - shard.info.start)
    return [index for index, done in enumerate(covered) if not done]
