"""Group decoded samples into shards and write them on a background thread.

A shard ends when the next sample would take its tensor data past the size target, its
header past `MAX_HEADER_BYTES`, or its sample count past `MAX_SAMPLES` (the header is
parsed whole on a shard's first read: it must stay small whatever the samples are like).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import queue
import threading

from ..core.decoding import Decoded
from ..core.errors import InsufficientSpaceError
from ..core.units import format_size
from .atomic import PendingFile
from .codec import Encoded
from .format import ShardInfo
from .fs import Directory
from .layout import shard_name, shard_stem
from .options import DEFAULT_SHARD_BYTES, ShardOptions, automatic_shard_bytes
from .shardfile import write_shard
from .staging import StagedShard

logger = logging.getLogger(__name__)

SPACE_ESTIMATE_SAMPLES = 16
"""Samples decoded before the free-space check estimates the whole build's size."""

SPACE_MARGIN = 1.05
"""Headroom over the estimate: headers, the manifest, and samples larger than the first."""

MAX_HEADER_BYTES = 1 << 20
"""A shard's header (tensor entries and sample records) stays under this: parsing it is
what a shard's first read waits for (safetensors itself refuses headers over 100 MB)."""

MAX_SAMPLES = 4096
"""Samples per shard at most, so that tiny samples do not make one huge header either."""

TENSOR_ENTRY_BYTES = 100
"""What one tensor's entry adds to a header, about (name, dtype, shape, offsets)."""

NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
"""The errnos of a full filesystem or an exhausted quota."""

Sample = Decoded[Encoded]


def free_bytes(directory: Directory) -> int:
    """Bytes an unprivileged user may still write on ``directory``'s filesystem."""
    info = os.fstatvfs(directory.fd)
    return info.f_bavail * info.f_frsize


def no_space(error: OSError, what: str, staging: Directory) -> InsufficientSpaceError:
    """The error for a full disk while writing ``what``, naming the directory and free space."""
    space = InsufficientSpaceError(
        f"no space left on device while writing {what} to {staging.path}: "
        f"{format_size(free_bytes(staging))} free. Completed shards stay there for "
        "the next build to resume (`shardcache clear` removes them)"
    )
    space.errno = error.errno
    return space


def _header_bytes(sample: Sample) -> int:
    """About what ``sample`` adds to its shard's header."""
    record = json.dumps(sample.value.skeleton, ensure_ascii=False, separators=(",", ":"))
    return len(record) + 40 + TENSOR_ENTRY_BYTES * len(sample.value.tensors)


class ShardWriter:
    """Takes decoded samples in index order; writes shards on a background thread.

    Writing, checksumming and fsync overlap with decoding (xxhash and file writes release
    the GIL); a bounded queue keeps at most two shards in memory.
    """

    def __init__(
        self,
        staging: Directory,
        options: ShardOptions,
        samples_to_write: int,
        build_samples: int | None = None,
    ) -> None:
        self.staging = staging
        self.automatic_size = options.target_bytes is None
        self.shard_bytes = options.target_bytes or DEFAULT_SHARD_BYTES
        self.samples_to_write = samples_to_write
        # A cooperative build's writers each write a part: sizes are estimated for the whole.
        self.build_samples = build_samples or samples_to_write
        self.written: list[StagedShard] = []
        self.samples_written = 0
        self._pending: list[Sample] = []
        self._pending_bytes = 0
        self._pending_header = 0
        self._seen = 0
        self._seen_bytes = 0
        self._error: BaseException | None = None
        self._queue: queue.Queue[list[Sample] | None] = queue.Queue(maxsize=2)
        self._thread = threading.Thread(target=self._run, name="shardcache-writer", daemon=True)
        self._thread.start()

    def add(self, sample: Sample) -> None:
        """Take one decoded sample; samples arrive in increasing index order."""
        if self._error is not None:
            raise self._error
        size = sample.value.stored_bytes
        header = _header_bytes(sample)
        self._seen += 1
        self._seen_bytes += size
        if self._seen == min(SPACE_ESTIMATE_SAMPLES, self.samples_to_write):
            self._check_free_space()
            if self.automatic_size:
                self.shard_bytes = automatic_shard_bytes(
                    self._seen_bytes // self._seen * self.build_samples
                )
        if self._pending and (
            sample.index != self._pending[-1].index + 1
            or self._pending_bytes + size > self.shard_bytes
            or self._pending_header + header > MAX_HEADER_BYTES
            or len(self._pending) >= MAX_SAMPLES
        ):
            self._submit()
        self._pending.append(sample)
        self._pending_bytes += size
        self._pending_header += header

    def _check_free_space(self) -> None:
        needed = int(self._seen_bytes / self._seen * self.build_samples * SPACE_MARGIN)
        free = free_bytes(self.staging)
        if needed > free:
            # Refused: writing what is pending would only fill the disk, and a full disk
            # there would replace this error (which has the numbers) with ENOSPC.
            self._pending = []
            self._pending_bytes = self._pending_header = 0
            raise InsufficientSpaceError(
                f"not enough free space to build the cache in {self.staging.path.parent.parent}: "
                f"needs about {format_size(needed)} ({self.build_samples} samples of about "
                f"{format_size(self._seen_bytes // self._seen)}), {format_size(free)} free. "
                "Free some space (`shardcache prune`), or set cache_dir / SHARDCACHE_DIR elsewhere"
            )

    def _submit(self) -> None:
        self._queue.put(self._pending)
        self._pending = []
        self._pending_bytes = self._pending_header = 0

    def _run(self) -> None:
        while (samples := self._queue.get()) is not None:
            if self._error is not None:
                continue  # drain, so that close() never blocks on a full queue
            try:
                self.written.append(self._write(samples))
                self.samples_written += len(samples)
            except BaseException as error:  # noqa: BLE001 (re-raised in the decoding thread)
                self._error = error

    def _write(self, samples: list[Sample]) -> StagedShard:
        start, stop = samples[0].index, samples[-1].index + 1
        # The final name carries the checksum, known once the file is written; until the
        # rename, the temporary name keeps resume scans and readers away from it.
        try:
            with PendingFile(self.staging, shard_stem(start, stop)) as pending:
                header, digest = write_shard(pending.stream, samples)
                final = shard_name(start, stop, digest)
                pending.commit(final)
        except OSError as error:
            if error.errno in NO_SPACE:
                raise no_space(error, f"samples [{start}, {stop})", self.staging) from error
            raise
        logger.debug("wrote %s (%d samples, %d bytes)", final, stop - start, header.file_bytes)
        info = ShardInfo(final, start, stop, header.file_bytes, digest)
        return StagedShard(info, header)

    def close(self) -> None:
        """Write what is pending, wait for the thread, and raise its error if it had one."""
        if self._pending and self._error is None:
            self._submit()
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
