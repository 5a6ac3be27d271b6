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
from collections.abc import Callable

HEAD_BYTES = 64 << 10
"""Bytes hinted at the start of each shard when it is opened: its header (a few KiB per
hundred samples) and the first samples after it."""

_PAGE = mmap.PAGESIZE


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


Hint = Callable[[], object]
"""One hint, ready to be passed to the kernel (`will_need_soon`)."""


def span_cached(address: int, length: int) -> bool | None:
    """Whether every page of mapped memory ``[address, address + length)`` is in memory.

    For a file mapping, whether the page cache holds them, faulted in here or not
    (``mincore``): a few microseconds for a MiB, where hinting a cached MiB walks its 256
    pages (~50 us). ``None`` where it cannot be told.
    """
    libc = _libc()
    if libc is None or length <= 0:
        return None
    aligned = address - address % _PAGE
    size = address + length - aligned
    vector = ctypes.create_string_buffer(-(-size // _PAGE))
    if libc.mincore(aligned, size, vector) != 0:
        return None
    return 0 not in vector.raw  # one byte per page, 1 when resident


def mapped_hint(address: int, length: int) -> Hint | None:
    """A hint that ``[address, address + length)`` of a mapping will be read soon."""
    libc = _libc()
    if libc is None or length <= 0:
        return None
    aligned = address - address % _PAGE  # madvise takes page-aligned addresses
    return functools.partial(libc.madvise, aligned, address + length - aligned, mmap.MADV_WILLNEED)


def file_hint(descriptor: int, begin: int, end: int) -> Hint | None:
    """A hint that bytes ``[begin, end)`` of the open file ``descriptor`` will be read soon."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is None or end <= begin:
        return None
    return functools.partial(advise, descriptor, begin, end - begin, os.POSIX_FADV_WILLNEED)


class _Advisor:
    """A daemon thread that passes hints to the kernel, so that their callers do not wait.

    ``MADV_WILLNEED`` returns once the reads are queued, but queuing them allocates the
    pages and can wait for the device's queue: tens of milliseconds for a cold 32 MiB batch,
    which a DataLoader's main thread should spend serving batches. The hints are libc's
    ``madvise`` through ctypes and ``os.posix_fadvise``, both called without the GIL. The
    thread ends after 0.2 s without work (hints come a batch apart), so that few forks (new
    DataLoader workers) meet it. A hint whose mapping or descriptor was closed meanwhile
    fails (ignored) or hints other memory or another file: it cannot change what a read
    returns.
    """

    IDLE_SECONDS = 0.2

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[list[Hint]] = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards _thread
        self._thread: threading.Thread | None = None

    def submit(self, hints: list[Hint]) -> None:
        self._queue.put(hints)
        with self._lock:
            if self._thread is not None:
                return
            thread = threading.Thread(target=self._run, name="shardcache-readahead", daemon=True)
            try:
                thread.start()
            except RuntimeError:  # no thread to be had (a process limit, shutdown): no hints
                with contextlib.suppress(queue.Empty):
                    while True:
                        self._queue.get_nowait()
                return
            self._thread = thread

    def _run(self) -> None:
        while True:
            try:
                hints = self._queue.get(timeout=self.IDLE_SECONDS)
            except queue.Empty:
                with self._lock:  # hints submitted from now on find no thread and start one
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            for hint in hints:
                advise_now(hint)  # madvise returns -1 on failure: ignored too


_advisor = _Advisor()


def _new_advisor_after_fork() -> None:
    global _advisor  # noqa: PLW0603 (a forked child has no thread: start afresh)
    _advisor = _Advisor()


os.register_at_fork(after_in_child=_new_advisor_after_fork)


def advise_now(hint: Hint | None) -> None:
    """Pass ``hint`` to the kernel from this thread (a hint never fails a read)."""
    if hint is not None:
        with contextlib.suppress(Exception):
            hint()


def will_need_soon(hints: list[Hint]) -> None:
    """Pass ``hints`` to the kernel from a background thread."""
    if hints:
        _advisor.submit(hints)
