"""The C library through ctypes, for memory calls on any address (``madvise``, ``mincore``).

Python's ``mmap`` module makes them only on mappings it created. Calls release the GIL.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def libc() -> ctypes.CDLL | None:
    """The C library with ``madvise`` and ``mincore`` declared, or None where it is missing."""
    try:
        library = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        library.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
        library.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return library
