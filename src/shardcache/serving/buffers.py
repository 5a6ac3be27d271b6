"""New batch buffers, allocated so that filling one the first time costs little.

A slot's buffer is allocated once per slot and filled batch after batch; only its first
fill pays for the memory itself. Measured for a 32 MiB buffer on this project's VM (Linux
6.18, ``/work/scratch/s19/alloc.py``): in 4 KiB pages, the first fill faults 8,192 times
(20 ms, against 3.6 ms for any later fill); in 2 MiB pages (transparent huge pages on
request, the kernel's ``madvise`` mode) 16 times (6.7 ms). A worker's buffer lives in
shared memory, allocated there directly (27 ms with its first fill), as ``default_collate``
does, not allocated and then moved by ``share_memory_()``, which copies it (36 ms).
"""

from __future__ import annotations

import mmap

import torch

from ..core.libc import libc

_PAGE = mmap.PAGESIZE


def new_buffer(nbytes: int, *, shared: bool) -> torch.UntypedStorage:
    """A buffer of ``nbytes``.

    In shared memory (a worker's, which the main process maps), or in this process's
    memory, in huge pages where the kernel grants them.
    """
    if shared:
        return torch.UntypedStorage._new_shared(nbytes)  # type: ignore[no-untyped-call,no-any-return]
    storage = torch.empty(nbytes, dtype=torch.uint8).untyped_storage()
    _ask_for_huge_pages(storage.data_ptr(), nbytes)
    return storage


def _ask_for_huge_pages(address: int, length: int) -> None:
    """``MADV_HUGEPAGE`` over the whole pages of ``[address, address + length)``.

    A refusal, or a kernel without transparent huge pages, leaves 4 KiB pages.
    """
    library, advice = libc(), getattr(mmap, "MADV_HUGEPAGE", None)
    begin = -(-address // _PAGE) * _PAGE
    end = (address + length) // _PAGE * _PAGE
    if library is not None and advice is not None and end > begin:
        library.madvise(begin, end - begin, advice)
