"""Read-ahead hints: ask the kernel for bytes a reader is about to touch, all at once.

A cold read through a mapping waits for the disk one page fault at a time, so the reads of
a batch's samples (and of the headers of the shards they lie in) queue one behind the
other: on a disk with a few milliseconds of latency, a shuffled first batch spent most of
its time waiting. ``MADV_WILLNEED`` / ``POSIX_FADV_WILLNEED`` start the reads without
waiting for them, so the disk sees them together; bytes already in the page cache cost a
lookup. A hint never fails a read: where the call is missing or refused, nothing happens.
"""

from __future__ import annotations

import contextlib
import mmap
import os

HEAD_BYTES = 64 << 10
"""Bytes hinted at the start of each shard when it is opened: its header (a few KiB per
hundred samples) and the first samples after it."""

_PAGE = mmap.PAGESIZE


def will_need_mapped(mapping: mmap.mmap, begin: int, end: int) -> None:
    """Hint that bytes ``[begin, end)`` of ``mapping`` will be read soon."""
    advise = getattr(mapping, "madvise", None)
    if advise is None or end <= begin:
        return
    aligned = begin - begin % _PAGE  # madvise takes page-aligned addresses
    with contextlib.suppress(OSError, ValueError):  # a hint: the read reports real problems
        advise(mmap.MADV_WILLNEED, aligned, end - aligned)


def will_need_file(descriptor: int, begin: int, end: int) -> None:
    """Hint that bytes ``[begin, end)`` of the open file ``descriptor`` will be read soon."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is None or end <= begin:
        return
    with contextlib.suppress(OSError):  # a hint only
        advise(descriptor, begin, end - begin, os.POSIX_FADV_WILLNEED)
