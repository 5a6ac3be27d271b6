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
import ctypes
import ctypes.util
import functools
import mmap
import os
import queue
import threading

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


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library (for ``mincore`` and a ``madvise`` that releases the GIL), or None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return libc


def page_cached(address: int) -> bool | None:
    """Whether the page of mapped memory holding ``address`` is in memory (``None``: unknown).

    For a file mapping, whether the page cache holds that page, faulted in here or not. One
    page costs a microsecond, where hinting a cached MiB walks 256 pages (~50 us).
    """
    libc = _libc()
    if libc is None:
        return None
    vector = ctypes.create_string_buffer(1)
    if libc.mincore(address - address % _PAGE, 1, vector) != 0:
        return None
    return bool(vector.raw[0] & 1)


class _Advisor:
    """A daemon thread that hints spans of mapped memory, so that callers do not wait.

    ``MADV_WILLNEED`` returns once the reads are queued, but queuing them allocates the
    pages and can wait for the device's queue: tens of milliseconds for a cold 32 MiB batch,
    which a DataLoader's main thread should spend serving batches. The thread calls libc's
    ``madvise`` through ctypes (without the GIL), takes no Python lock but its queue's, and
    ends after 0.2 s without work (hints come a batch apart), so that few forks (new
    DataLoader workers) meet it. A span whose mapping was closed meanwhile is refused (or
    hints other memory): a hint cannot change what a read returns.
    """

    IDLE_SECONDS = 0.2

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[list[tuple[int, int]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, spans: list[tuple[int, int]]) -> None:
        self._queue.put(spans)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="shardcache-readahead", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        libc = _libc()
        while True:
            try:
                spans = self._queue.get(timeout=self.IDLE_SECONDS)
            except queue.Empty:
                with self._lock:  # a span submitted now finds no thread and starts one
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            for address, length in spans:
                aligned = address - address % _PAGE
                if libc is not None:  # a failure (-1, errno) is ignored: a hint only
                    libc.madvise(aligned, length + address - aligned, mmap.MADV_WILLNEED)


_advisor = _Advisor()


def _new_advisor_after_fork() -> None:
    global _advisor  # noqa: PLW0603 (a forked child has no thread: start afresh)
    _advisor = _Advisor()


os.register_at_fork(after_in_child=_new_advisor_after_fork)


def will_need_soon(spans: list[tuple[int, int]]) -> None:
    """Hint spans ``(address, length)`` of mapped memory from a background thread."""
    if spans and _libc() is not None:
        _advisor.submit(spans)
