"""Cold reads on demand: drop files' pages from the page cache, check they are gone, time reads.

`drop` asks the kernel to evict each file's cached pages with
``posix_fadvise(POSIX_FADV_DONTNEED)``, which needs no privileges. The kernel only evicts
pages that are clean and mapped by no process, so `drop` does not trust the call: it counts
the files' resident pages afterwards with ``mincore(2)`` (through ctypes, on a fresh
``PROT_READ`` mapping that touches nothing) and reports what stayed. `sequential_read_mb_s`
times a sequential read of the files after a drop: the disk's cold bandwidth for them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import mmap
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PAGE = mmap.PAGESIZE
READ_BUFFER = 8 << 20
"""Bytes per ``readv`` of the sequential read: large enough that the disk, not the calls, sets
the rate."""


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    return libc


def resident_map(path: Path) -> list[bool]:
    """Whether each page of ``path`` is in the page cache (``mincore`` of a mapping).

    Mapping a file reads none of it; ``mincore`` only looks at the page cache.
    """
    size = path.stat().st_size
    if size == 0:
        return []
    libc = _libc()
    descriptor = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, descriptor, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"mmap of {path} failed")
        try:
            vector = ctypes.create_string_buffer(-(-size // PAGE))
            if libc.mincore(address, size, vector) != 0:
                raise OSError(ctypes.get_errno(), f"mincore of {path} failed")
            return [bool(byte & 1) for byte in vector.raw]
        finally:
            libc.munmap(address, size)
    finally:
        os.close(descriptor)


def resident_pages(path: Path) -> tuple[int, int]:
    """``(resident, total)`` pages of ``path`` in the page cache."""
    pages = resident_map(path)
    return sum(pages), len(pages)


def resident_fraction(paths: Iterable[Path]) -> float:
    """Fraction of the files' pages in the page cache (1.0 for no pages at all)."""
    resident = total = 0
    for path in paths:
        mine, theirs = resident_pages(path)
        resident += mine
        total += theirs
    return resident / total if total else 1.0


def drop(paths: Iterable[Path]) -> dict[str, Any]:
    """Evict the files' pages (``POSIX_FADV_DONTNEED``); the resident fraction before and after.

    Call it when no process maps the files: the kernel keeps mapped pages. A garbage
    collection first lets this process's dropped mappings go.
    """
    files = list(paths)
    gc.collect()
    before = resident_fraction(files)
    for path in files:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)
    return {"resident_before": before, "resident_after": resident_fraction(files)}


def sequential_read_mb_s(paths: Iterable[Path]) -> dict[str, Any]:
    """Drop the files' pages, then read them in order (``readv``, 8 MiB at a time): MB/s.

    The pages read stay cached: drop them again before a cold measurement.
    """
    files = list(paths)
    dropped = drop(files)
    view = memoryview(bytearray(READ_BUFFER))
    total = 0
    started = time.perf_counter()
    for path in files:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            while read := os.readv(descriptor, [view]):
                total += read
        finally:
            os.close(descriptor)
    seconds = time.perf_counter() - started
    return {
        "mb_s": total / seconds / 1e6,
        "bytes": total,
        "seconds": seconds,
        "resident_after_drop": dropped["resident_after"],
    }
