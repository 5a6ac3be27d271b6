"""New batch buffers: shared memory for workers, huge pages in process where granted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shardcache.serving.buffers import new_buffer

_THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _anon_huge_kib(address: int, length: int) -> int:
    """AnonHugePages of this process's mappings that overlap ``[address, address + length)``.

    (``madvise`` splits a mapping where its advice changes: the buffer spans several.)
    """
    total, overlaps = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            begin, end = (int(part, 16) for part in head.split("-"))
            overlaps = begin < address + length and address < end
        elif overlaps and head == "AnonHugePages:":
            total += int(line.split()[1])
    return total


def test_a_workers_buffer_is_shared_memory_of_the_size_asked() -> None:
    buffer = new_buffer(3 << 20, shared=True)
    shared, nbytes = buffer.is_shared(), buffer.nbytes()
    assert shared
    assert nbytes == 3 << 20
    tensor = torch.empty(0, dtype=torch.uint8).set_(buffer)
    tensor.fill_(7)
    assert int(tensor.sum()) == 7 * (3 << 20)


def test_an_in_process_buffer_is_held_in_huge_pages_where_the_kernel_grants_them() -> None:
    if not _THP.exists() or "[never]" in _THP.read_text():
        pytest.skip("no transparent huge pages on this machine")
    buffer = new_buffer(32 << 20, shared=False)
    shared, nbytes = buffer.is_shared(), buffer.nbytes()
    assert not shared
    assert nbytes == 32 << 20
    torch.empty(0, dtype=torch.uint8).set_(buffer).fill_(1)  # the first fill faults it in
    # 2 MiB pages, except at the unaligned ends (the allocation is not 2 MiB-aligned).
    huge_kib = _anon_huge_kib(buffer.data_ptr(), buffer.nbytes())  # (a storage's repr in a
    assert huge_kib >= 28 << 10  # failed assertion would print its 32 MiB, for minutes)
