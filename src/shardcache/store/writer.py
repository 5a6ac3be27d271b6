"""Build a cache: decode into shards in a staging directory, then publish it with one rename.

Crash safety, step by step (a ``kill -9`` at any point leaves no published cache or a
complete one):

1. Shards are written to a temporary name, fsynced, and renamed to a name that carries
   their sample range and checksum; a shard under its final name is complete.
2. A later build resumes from every final-named shard whose header and checksum hold,
   and decodes only the samples they do not cover.
3. The manifest is written last, fsynced, and the staging directory is renamed into place:
   a reader sees the whole cache or nothing.
"""

from __future__ import annotations

import errno
import logging
import queue
import shutil
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._version import __version__
from ..core.decoding import Decoded, decode
from ..core.errors import CorruptCacheError, InsufficientSpaceError
from ..core.types import RawDataLoader
from ..core.units import format_size
from .atomic import PendingFile, fsync_directory, write_atomically
from .format import Manifest, ShardInfo
from .header import file_digest, read_header
from .key import CacheKey, canonical_json
from .layout import ITEMS_NAME, MANIFEST_NAME, SHARD_NAME, TEMPORARY_PREFIX, shard_name, shard_stem
from .locking import BuildLock
from .options import DEFAULT_SHARD_BYTES, ShardOptions, automatic_shard_bytes
from .shardfile import write_shard

logger = logging.getLogger(__name__)

SPACE_ESTIMATE_SAMPLES = 16
"""Samples decoded before the free-space check estimates the whole build's size."""

SPACE_MARGIN = 1.05
"""Headroom over the estimate: headers, the manifest, and samples larger than the first."""


@dataclass(frozen=True)
class _Shard:
    info: ShardInfo
    labels: list[int | None]


def _sample_bytes(sample: Decoded) -> int:
    tensors = [sample.tensor, *(v for v in sample.metadata.values() if hasattr(v, "nbytes"))]
    return sum(int(tensor.nbytes) for tensor in tensors)


class _ShardWriter:
    """Groups decoded samples into shards and writes them on a background thread.

    Writing, checksumming and fsync overlap with decoding (xxhash and file writes release
    the GIL); a bounded queue keeps at most two shards in memory.
    """

    def __init__(self, staging: Path, options: ShardOptions, samples_to_write: int) -> None:
        self.staging = staging
        self.automatic_size = options.target_bytes is None
        self.shard_bytes = options.target_bytes or DEFAULT_SHARD_BYTES
        self.samples_to_write = samples_to_write
        self.written: list[_Shard] = []
        self.samples_written = 0
        self._pending: list[Decoded] = []
        self._pending_bytes = 0
        self._seen = 0
        self._seen_bytes = 0
        self._error: BaseException | None = None
        self._queue: queue.Queue[list[Decoded] | None] = queue.Queue(maxsize=2)
        self._thread = threading.Thread(target=self._run, name="shardcache-writer", daemon=True)
        self._thread.start()

    def add(self, sample: Decoded) -> None:
        """Take one decoded sample; samples arrive in increasing index order."""
        if self._error is not None:
            raise self._error
        size = _sample_bytes(sample)
        self._seen += 1
        self._seen_bytes += size
        if self._seen == min(SPACE_ESTIMATE_SAMPLES, self.samples_to_write):
            self._check_free_space()
            if self.automatic_size:
                self.shard_bytes = automatic_shard_bytes(
                    self._seen_bytes // self._seen * self.samples_to_write
                )
        contiguous = not self._pending or sample.index == self._pending[-1].index + 1
        if self._pending and (not contiguous or self._pending_bytes + size > self.shard_bytes):
            self._submit()
        self._pending.append(sample)
        self._pending_bytes += size

    def _check_free_space(self) -> None:
        needed = int(self._seen_bytes / self._seen * self.samples_to_write * SPACE_MARGIN)
        free = shutil.disk_usage(self.staging).free
        if needed > free:
            # Refused: writing what is pending would only fill the disk, and a full disk
            # there would replace this error (which has the numbers) with ENOSPC.
            self._pending = []
            self._pending_bytes = 0
            raise InsufficientSpaceError(
                f"not enough free space to build the cache in {self.staging.parent.parent}: "
                f"needs about {format_size(needed)} ({self.samples_to_write} samples of about "
                f"{format_size(self._seen_bytes // self._seen)}), {format_size(free)} free. "
                "Free some space (`shardcache prune`), or set cache_dir / SHARDCACHE_DIR elsewhere"
            )

    def _submit(self) -> None:
        self._queue.put(self._pending)
        self._pending = []
        self._pending_bytes = 0

    def _run(self) -> None:
        while (samples := self._queue.get()) is not None:
            if self._error is not None:
                continue  # drain, so that close() never blocks on a full queue
            try:
                self.written.append(self._write(samples))
                self.samples_written += len(samples)
            except BaseException as error:  # noqa: BLE001 (re-raised in the decoding thread)
                self._error = error

    def _write(self, samples: list[Decoded]) -> _Shard:
        start, stop = samples[0].index, samples[-1].index + 1
        # The final name carries the checksum, known once the file is written; until the
        # rename, the temporary name keeps resume scans and readers away from it.
        try:
            with PendingFile(self.staging / shard_stem(start, stop)) as pending:
                size, digest = write_shard(pending.stream, samples)
                final = self.staging / shard_name(start, stop, digest)
                pending.commit(final)
        except OSError as error:
            if error.errno in NO_SPACE:
                raise _no_space(error, f"samples [{start}, {stop})", self.staging) from error
            raise
        logger.debug("wrote %s (%d samples, %d bytes)", final.name, stop - start, size)
        info = ShardInfo(file=final.name, start=start, stop=stop, bytes=size, xxh3_128=digest)
        return _Shard(info, [sample.label for sample in samples])

    def close(self) -> None:
        """Write what is pending, wait for the thread, and raise its error if it had one."""
        if self._pending and self._error is None:
            self._submit()
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
"""The errnos of a full filesystem or an exhausted quota."""


def _no_space(error: OSError, what: str, staging: Path) -> InsufficientSpaceError:
    """The error for a full disk while writing ``what``, naming the directory and free space."""
    space = InsufficientSpaceError(
        f"no space left on device while writing {what} to {staging}: "
        f"{format_size(shutil.disk_usage(staging).free)} free. Completed shards stay there for "
        "the next build to resume (`shardcache clear` removes them)"
    )
    space.errno = error.errno
    return space


def _reusable_shards(staging: Path, num_items: int) -> list[_Shard]:
    """Complete, checksum-verified shards of an interrupted build; others are deleted."""
    found: list[_Shard] = []
    for path in sorted(staging.iterdir()):
        if path.name.startswith(TEMPORARY_PREFIX):
            path.unlink()  # a dead writer's partial file; we hold the lock
            continue
        match = SHARD_NAME.match(path.name)
        if match is None:
            continue
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
            continue
        labels = [record.get("label") for record in header.records]
        info = ShardInfo(path.name, start, stop, header.file_bytes, digest)
        found.append(_Shard(info, labels))
    kept: list[_Shard] = []
    for shard in sorted(found, key=lambda s: s.info.start):
        if kept and shard.info.start < kept[-1].info.stop:
            (staging / shard.info.file).unlink()  # overlaps a kept one: never serve twice
            continue
        kept.append(shard)
    return kept


def _missing_indices(num_items: int, shards: Iterable[_Shard]) -> list[int]:
    covered = bytearray(num_items)
    for shard in shards:
        covered[shard.info.start : shard.info.stop] = b"\x01" * (shard.info.stop - shard.info.start)
    return [index for index, done in enumerate(covered) if not done]


def _make_staging(staging: Path) -> None:
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


def _decode_missing(
    staging: Path,
    name: str,
    subset: str,
    items: Sequence[Any],
    loader: RawDataLoader,
    lock: BuildLock,
    parallel: int,
    options: ShardOptions,
) -> list[_Shard]:
    """Every shard of the build: the verified ones in ``staging`` and those decoded now."""
    reused = _reusable_shards(staging, len(items))
    missing = _missing_indices(len(items), reused)
    if reused:
        logger.info(
            "resuming the build of %s: %d shards (%d samples) reused, %d to decode",
            name,
            len(reused),
            len(items) - len(missing),
            len(missing),
        )
    else:
        logger.info("building %s (%d samples) in %s", name, len(items), staging.parent.parent)
    shards = list(reused)
    if missing:
        writer = _ShardWriter(staging, options, len(missing))
        try:
            for sample in decode(
                subset, items, loader, indices=missing, parallel=parallel, storable=True
            ):
                writer.add(sample)
                lock.report_progress(len(items) - len(missing) + writer.samples_written, len(items))
        finally:
            # Keeps what was decoded before a failure, for the next build to resume.
            writer.close()
        shards += writer.written
    return sorted(shards, key=lambda shard: shard.info.start)


def _publish(staging: Path, final: Path, manifest: Manifest, items: Sequence[Any]) -> None:
    """Write the items and the manifest, then rename ``staging`` to ``final``."""
    # The manifest goes last: its presence is what makes the directory a cache.
    for file_name, text in (
        (ITEMS_NAME, canonical_json(list(items))),
        (MANIFEST_NAME, manifest.to_json()),
    ):
        try:
            write_atomically(staging / file_name, text.encode())
        except OSError as error:
            # A disk that fills up after the last shard must still give the clear error.
            if error.errno in NO_SPACE:
                raise _no_space(error, file_name, staging) from error
            raise
    fsync_directory(staging)
    staging.rename(final)  # one atomic step from "building" to "published"
    fsync_directory(final.parent)


def build(
    *,
    root_path: Path,
    staging: Path,
    name: str,
    subset: str,
    items: Sequence[Any],
    loader: RawDataLoader,
    key: CacheKey,
    lock: BuildLock,
    parallel: int,
    options: ShardOptions,
) -> Path:
    """Build and publish the cache ``name`` under ``root_path``; the caller holds ``lock``."""
    _make_staging(staging)
    shards = _decode_missing(staging, name, subset, items, loader, lock, parallel, options)
    manifest = Manifest(
        key=key.digest,
        subset=subset,
        num_samples=len(items),
        shards=tuple(shard.info for shard in shards),
        labels=tuple(label for shard in shards for label in shard.labels),
        key_inputs=key.inputs,
        library_version=__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    final = root_path / name
    _publish(staging, final, manifest, items)
    logger.info("published %s: %d samples, %d shards", name, len(items), len(shards))
    return final
