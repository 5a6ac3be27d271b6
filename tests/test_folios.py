"""Shard bytes written in chunk-aligned writes (`store.folios`): same bytes, fewer faults."""

from __future__ import annotations

import gzip
import io
import itertools
import mmap
import os
import random
import resource
from pathlib import Path

import numpy as np
import pytest

from shardcache.store import folios
from shardcache.store.folios import write_chunked


def _pieces(seed: int, sizes: list[int]) -> list[memoryview]:
    rng = random.Random(seed)
    return [memoryview(rng.randbytes(size)) for size in sizes]


SIZES = [0, 1, 100, 4095, 4096, 4097, 0, 20_000, 3, 70_000, 1, 4096 * 3 + 5]


def test_the_file_holds_the_pieces_in_order_after_what_the_stream_had(tmp_path: Path) -> None:
    pieces = _pieces(0, SIZES)
    path = tmp_path / "shard"
    with path.open("wb") as stream:
        stream.write(b"x" * 100)  # still in the stream's buffer: flushed first
        write_chunked(stream, pieces, chunk=4096)
    assert path.read_bytes() == b"x" * 100 + b"".join(pieces)


def test_every_write_but_the_last_ends_on_a_chunk_boundary_and_none_crosses_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[tuple[int, int]] = []
    real_writev = os.writev

    def recording_writev(fd: int, buffers: list[memoryview]) -> int:
        start = os.lseek(fd, 0, os.SEEK_CUR)
        done = real_writev(fd, buffers)
        writes.append((start, start + done))
        return done

    monkeypatch.setattr(folios.os, "writev", recording_writev)
    pieces = _pieces(1, SIZES)
    with (tmp_path / "shard").open("wb") as stream:
        stream.write(b"h" * 777)
        write_chunked(stream, pieces, chunk=4096)
    total = 777 + sum(piece.nbytes for piece in pieces)
    assert writes[0][0] == 777
    assert writes[-1][1] == total
    assert all(end == next_start for (_, end), (next_start, _) in itertools.pairwise(writes))
    assert all(end % 4096 == 0 for _, end in writes[:-1])
    assert all(start // 4096 == (end - 1) // 4096 for start, end in writes)


def test_short_writes_are_resumed_mid_piece(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def short_writev(fd: int, buffers: list[memoryview]) -> int:
        return os.write(fd, b"".join(buffers)[:1000])  # at most 1000 bytes per call

    monkeypatch.setattr(folios.os, "writev", short_writev)
    pieces = _pieces(2, SIZES)
    path = tmp_path / "shard"
    with path.open("wb") as stream:
        write_chunked(stream, pieces, chunk=8192)
    assert path.read_bytes() == b"".join(pieces)


def test_a_write_that_makes_no_progress_fails_instead_of_looping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(folios.os, "writev", lambda fd, buffers: 0)
    with (tmp_path / "shard").open("wb") as stream, pytest.raises(OSError, match="wrote nothing"):
        write_chunked(stream, _pieces(3, [5000]), chunk=4096)


def test_many_small_pieces_in_one_chunk_are_joined_not_passed_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts: list[int] = []
    real_writev = os.writev

    def counting_writev(fd: int, buffers: list[memoryview]) -> int:
        counts.append(len(buffers))
        return real_writev(fd, buffers)

    monkeypatch.setattr(folios.os, "writev", counting_writev)
    pieces = _pieces(4, [10] * 3000)
    path = tmp_path / "shard"
    with path.open("wb") as stream:
        write_chunked(stream, pieces, chunk=1 << 16)
    assert path.read_bytes() == b"".join(pieces)
    assert max(counts) <= 512  # Linux refuses more than 1024 buffers in one writev


def test_a_stream_without_a_file_gets_the_same_bytes() -> None:
    pieces = _pieces(5, SIZES)
    stream = io.BytesIO()
    write_chunked(stream, pieces, chunk=4096)
    assert stream.getvalue() == b"".join(pieces)


def test_a_pipe_or_a_compressing_file_is_written_through_its_stream(tmp_path: Path) -> None:
    pieces = _pieces(7, [100, 5000, 3])
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "wb") as pipe:  # a BufferedWriter, not to a regular file
        write_chunked(pipe, pieces, chunk=4096)
    with os.fdopen(read_end, "rb") as reader:
        assert reader.read() == b"".join(pieces)
    path = tmp_path / "shard.gz"
    with gzip.open(path, "wb") as compressing:  # its fileno() is the compressed file's
        write_chunked(compressing, pieces, chunk=4096)  # type: ignore[arg-type]
    assert gzip.decompress(path.read_bytes()) == b"".join(pieces)


def _first_touch_faults(path: Path) -> int:
    """Page faults of a fresh mapping of ``path`` read through once (pages cached)."""
    with path.open("rb") as file:
        mapping = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        data = np.frombuffer(mapping, dtype=np.uint8)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        int(data[:: mmap.PAGESIZE].sum())  # one read per page
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        del data
        return faults
    finally:
        mapping.close()


def test_chunked_writes_leave_large_page_cache_folios_where_the_filesystem_has_them(
    tmp_path: Path,
) -> None:
    """A shard-like file (a 5 KiB header, then 256 KiB samples) written chunk-aligned maps
    with far fewer first-touch faults than the same bytes written piece by piece."""
    pieces = _pieces(6, [5003] + [256 << 10] * 64)  # 16 MiB
    unaligned, chunked = tmp_path / "unaligned", tmp_path / "chunked"
    with unaligned.open("wb") as stream:
        for piece in pieces:
            stream.write(piece)
    with chunked.open("wb") as stream:
        write_chunked(stream, pieces)
    assert chunked.read_bytes() == unaligned.read_bytes()
    baseline = tmp_path / "baseline"  # the best case: one write of the whole file
    with baseline.open("wb") as stream:
        stream.write(b"".join(pieces))
    pages = chunked.stat().st_size // mmap.PAGESIZE
    if _first_touch_faults(baseline) > pages // 8:
        pytest.skip("this filesystem keeps file pages in small folios (e.g. tmpfs)")
    assert _first_touch_faults(chunked) * 3 < _first_touch_faults(unaligned)
