"""Shard bytes written in whole 2 MiB pieces of the file, so the page cache holds them large.

How a file was written decides the size of the page-cache folios that hold it: a write
that starts at an unaligned offset gets small folios (a 256 KiB sample after a 5 KiB
header came back as ~70 KiB folios), and every process that maps the shard then pays one
page fault per folio on its first touch of each (a DataLoader worker, a new run, each DDP
rank). Writes that start and end on 2 MiB boundaries of the file get folios of up to 2 MiB
(on filesystems with large folios, e.g. ext4 on Linux 6.16+), and a first touch costs a
few faults per shard. The bytes written are the same either way.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from collections.abc import Iterable
from typing import BinaryIO

CHUNK = 2 << 20
"""Writes end on multiples of this many bytes of the file (the x86-64 huge page)."""

_MAX_PIECES = 512
"""Pieces gathered in one `os.writev` at most (Linux takes 1024); more are joined first."""


def write_chunked(stream: BinaryIO, pieces: Iterable[memoryview], chunk: int = CHUNK) -> None:
    """Append ``pieces`` to ``stream``'s file in writes that end on multiples of ``chunk``.

    The pieces are gathered (`os.writev`), never copied, unless a chunk has many small
    ones. Any other stream than a regular file opened by `open` (`io.BytesIO`, a pipe, a
    compressing file whose descriptor is not where its bytes go) is written piece by piece.
    """
    fd = _regular_file(stream)
    if fd is None:
        for piece in pieces:
            stream.write(piece)
        return
    stream.flush()
    offset = os.lseek(fd, 0, os.SEEK_CUR)
    gathered: list[memoryview] = []
    size = 0
    for piece in pieces:
        rest = piece.cast("B")
        while rest.nbytes:
            room = chunk - (offset + size) % chunk
            taken, rest = rest[:room], rest[room:]
            gathered.append(taken)
            size += taken.nbytes
            if taken.nbytes == room:  # a chunk boundary: write up to it
                offset += _write_all(fd, gathered, size)
                gathered, size = [], 0
    if size:
        _write_all(fd, gathered, size)


def _regular_file(stream: BinaryIO) -> int | None:
    """``stream``'s descriptor if it writes straight to a regular file, else None."""
    if not isinstance(stream, io.BufferedWriter | io.FileIO):
        return None
    fd = stream.fileno()
    return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None


def _write_all(fd: int, pieces: list[memoryview], size: int) -> int:
    """Write ``pieces`` (``size`` bytes in all) to ``fd``, through short writes."""
    if len(pieces) > _MAX_PIECES:
        pieces = [memoryview(b"".join(pieces))]
    written = 0
    while written < size:
        done = os.writev(fd, pieces)
        if done == 0:  # never for a regular file; a loop that cannot end otherwise
            raise OSError(errno.EIO, f"a write of {size - written} bytes wrote nothing")
        written += done
        while done:  # drop what was written (a short write ends mid-piece)
            if done >= pieces[0].nbytes:
                done -= pieces.pop(0).nbytes
            else:
                pieces[0], done = pieces[0][done:], 0
    return size
