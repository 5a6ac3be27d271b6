"""Shard headers parsed and checked without torch, and whole-file checksums.

A shard is a safetensors file: an 8-byte little-endian header length, a JSON header, then
tensor data. Besides the tensors' entries the header holds ``__metadata__["shardcache"]``,
one JSON record per sample (see `shardfile` and `shardcache.core.records`). Everything a
reader relies on is checked here, one check per lie, so that `CorruptCacheError` names the
file and what is wrong.
Torch-free, so that ``shardcache verify`` starts fast.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import xxhash

from ..core.errors import CorruptCacheError
from ..core.records import skeleton_problem, widening_problem
from .fs import WrongKindError, open_regular

RECORD_KEY = "shardcache"
MAX_HEADER_BYTES = 100_000_000
"""safetensors' own limit on header size."""

ITEMSIZES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "U16": 2,
    "U32": 4,
    "U64": 8,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "C64": 8,
}
"""Bytes per element of each safetensors dtype code a shard may hold."""


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lies in a shard file (byte offsets from the file's start)."""

    code: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return ITEMSIZES[self.code]


@dataclass(frozen=True)
class ShardHeader:
    """A shard's parsed header: its tensors and per-sample records.

    ``unchecked``: the records not checked yet (`read_header` with ``check_records=False``);
    `record` checks each on its first use.
    """

    tensors: dict[str, TensorEntry]
    records: list[dict[str, Any]]
    start: int
    stop: int
    file_bytes: int
    path: Path | None = None
    unchecked: set[int] = field(default_factory=set)

    def record(self, index: int) -> dict[str, Any]:
        """Sample ``index``'s record, checked; `CorruptCacheError` names the file and the lie."""
        record = self.records[index - self.start]
        if index in self.unchecked:
            problem = _record_problem(record, index, self.tensors)
            if problem is not None:
                raise CorruptCacheError(
                    f"{self.path}: sample {index} has a malformed record: {problem}",
                    path=self.path,
                )
            self.unchecked.discard(index)
        return record


@dataclass(frozen=True)
class Storage:
    """How much a shard (or a cache) stores, and how much it serves."""

    tensors: int = 0
    narrow_tensors: int = 0
    stored_bytes: int = 0
    served_bytes: int = 0

    def __add__(self, other: Storage) -> Storage:
        return Storage(
            self.tensors + other.tensors,
            self.narrow_tensors + other.narrow_tensors,
            self.stored_bytes + other.stored_bytes,
            self.served_bytes + other.served_bytes,
        )


_SERVED_ITEMSIZES = {"F32": 4, "F64": 8}


def storage_of(header: ShardHeader) -> Storage:
    """What ``header``'s shard stores and serves (narrow tensors serve wider than stored)."""
    narrow, served = 0, 0
    for index, record in enumerate(header.records, start=header.start):
        for position, widening in record.get("widen", {}).items():
            entry = header.tensors[f"{index}/{position}"]
            narrow += 1
            served += (entry.end - entry.begin) // entry.itemsize * _SERVED_ITEMSIZES[widening[1]]
            served -= entry.end - entry.begin
    stored = sum(entry.end - entry.begin for entry in header.tensors.values())
    return Storage(len(header.tensors), narrow, stored, stored + served)


def descriptor_digest(fd: int) -> str:
    """xxh3-128 of the whole file open at ``fd``, read in 8 MiB pieces from its start."""
    hasher = xxhash.xxh3_128()
    offset = 0
    while chunk := os.pread(fd, 8 << 20, offset):
        hasher.update(chunk)
        offset += len(chunk)
    return hasher.hexdigest()


def file_digest(path: Path) -> str:
    """xxh3-128 of the regular file at ``path`` (never a FIFO, never through a last symlink)."""
    fd = open_regular(path)
    try:
        return descriptor_digest(fd)
    finally:
        os.close(fd)


ReadAt = Callable[[int, int], bytes]
"""``read_at(offset, size)``: bytes of an already opened shard (a mapping or a descriptor)."""


def _corrupt(path: Path, problem: str) -> CorruptCacheError:
    return CorruptCacheError(f"{path}: {problem}", path=path)


def size_problem(size: int, expected: int) -> str | None:
    """What is wrong with a shard of ``size`` bytes that the manifest says has ``expected``."""
    if size != expected:
        return f"shard is {size} bytes, the manifest says {expected}"
    return None


def _header_bytes(path: Path, read_at: ReadAt, size: int) -> bytes:
    """The raw JSON header of a shard of ``size`` bytes."""
    prefix = read_at(0, 8) if size >= 8 else b""
    if len(prefix) < 8:
        raise _corrupt(path, "shard is shorter than a safetensors header")
    (length,) = struct.unpack("<Q", prefix)
    if length > MAX_HEADER_BYTES:
        raise _corrupt(
            path,
            f"shard header is {length} bytes, over safetensors' limit of {MAX_HEADER_BYTES} "
            "(written by a shardcache that did not bound headers? `shardcache clear` it)",
        )
    if length > size - 8:
        raise _corrupt(
            path, f"shard header length {length} exceeds what the file holds ({size} bytes)"
        )
    return read_at(8, length)


def _read_header_bytes(path: Path, expected_bytes: int | None) -> tuple[bytes, int]:
    """The raw JSON header and the size of the file at ``path``."""
    try:
        fd = open_regular(path)
    except FileNotFoundError as error:
        raise _corrupt(path, "shard is missing") from error
    except WrongKindError as error:
        raise _corrupt(path, f"shard is {error.found}, not a regular file") from error
    except OSError as error:
        raise _corrupt(path, f"shard cannot be read: {error}") from error
    try:
        size = os.fstat(fd).st_size
        if expected_bytes is not None and (problem := size_problem(size, expected_bytes)):
            raise _corrupt(path, problem)
        return _header_bytes(path, lambda offset, n: os.pread(fd, n, offset), size), size
    except OSError as error:
        raise _corrupt(path, f"shard cannot be read: {error}") from error
    finally:
        os.close(fd)


def _tensor_entries(path: Path, header: dict[str, Any], data_start: int) -> dict[str, TensorEntry]:
    """Check each tensor's entry, and that together they cover the data without holes."""
    tensors: dict[str, TensorEntry] = {}
    for name, info in header.items():
        try:
            code = info["dtype"]
            itemsize = ITEMSIZES[code]
            shape = tuple(int(n) for n in info["shape"])
            begin, end = (int(n) for n in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as error:
            raise _corrupt(path, f"tensor {name!r} has a malformed entry ({error!r})") from error
        if begin < 0 or end - begin != math.prod(shape) * itemsize:
            raise _corrupt(path, f"tensor {name!r} spans {end - begin} bytes, unlike its shape")
        if begin % itemsize:
            raise _corrupt(path, f"tensor {name!r} is not aligned to its dtype")
        tensors[name] = TensorEntry(code, shape, data_start + begin, data_start + end)
    covered = data_start
    for entry in sorted(tensors.values(), key=lambda entry: entry.begin):
        if entry.begin != covered:
            raise _corrupt(path, "shard tensor data has holes or overlaps")
        covered = entry.end
    return tensors


def _count_problem(record: object) -> str | None:
    """Why ``record`` is not an object with a tensor count, or None."""
    if not isinstance(record, dict):
        return "not an object"
    count = record.get("tensors")
    if type(count) is not int or count < 0:
        return f"tensor count {count!r}"
    return None


def _record_problem(record: object, index: int, tensors: dict[str, TensorEntry]) -> str | None:
    """Why sample ``index``'s record cannot be served from ``tensors``, or None."""
    problem = _count_problem(record)
    if problem is not None:
        return problem
    record = cast("dict[str, Any]", record)
    count = record["tensors"]
    label = record.get("label")
    if label is not None and type(label) is not int:
        return f"label {label!r}"
    if any(f"{index}/{position}" not in tensors for position in range(count)):
        return "a tensor is missing"
    problem = skeleton_problem(record.get("sample"), count)
    if problem is not None:
        return problem
    widen = record.get("widen", {})
    if not isinstance(widen, dict):
        return "widen is not an object"
    for position, widening in widen.items():
        entry = tensors.get(f"{index}/{position}")
        problem = widening_problem(widening)
        if problem is not None or entry is None or entry.code != widening[0]:
            return problem or f"widening of tensor {position} does not match its dtype"
    return None


def read_header(
    path: Path,
    *,
    expected_bytes: int | None = None,
    opened: tuple[ReadAt, int] | None = None,
    check_records: bool = True,
) -> ShardHeader:
    """Parse and check a shard's header; `CorruptCacheError` names the file and the lie.

    Args:
        path: the shard file, read unless ``opened`` is given; named in errors.
        expected_bytes: the size the manifest promises.
        opened: ``(read_at, size)`` of a shard already mapped or opened, which reads it
            even after its file was unlinked.
        check_records: check every sample's record now; False leaves each to its first
            use (`ShardHeader.record`), so that a reader's first batch, which touches a
            few samples of many shards, checks those samples only.
    """
    if opened is None:
        raw, size = _read_header_bytes(path, expected_bytes)
    else:
        read_at, size = opened
        raw = _header_bytes(path, read_at, size)
    try:
        header = json.loads(raw)
        record = json.loads(header.pop("__metadata__")[RECORD_KEY])
        records = record["samples"]
        start, stop = record["start"], record["stop"]
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as error:
        raise _corrupt(
            path, f"header is not a shardcache safetensors header ({error!r})"
        ) from error
    # Valid JSON of the wrong shape must be refused here too, not fail later with a
    # TypeError (resume would crash on such a staged shard at every run).
    if not (isinstance(records, list) and type(start) is int and type(stop) is int):
        raise _corrupt(path, "header's sample records or range are malformed")
    if len(records) != stop - start:
        raise _corrupt(path, f"{len(records)} sample records for samples [{start}, {stop})")
    tensors = _tensor_entries(path, header, 8 + len(raw))
    end = max((entry.end for entry in tensors.values()), default=8 + len(raw))
    if end != size:
        raise _corrupt(path, f"shard is {size} bytes, its header describes {end}")
    for offset, record in enumerate(records):
        problem = (
            _record_problem(record, start + offset, tensors)
            if check_records
            else _count_problem(record)
        )
        if problem is not None:
            raise _corrupt(path, f"sample {start + offset} has a malformed record: {problem}")
    if sum(record["tensors"] for record in records) != len(tensors):
        raise _corrupt(path, "the shard holds tensors that no sample record names")
    unchecked = set() if check_records else set(range(start, stop))
    return ShardHeader(tensors, records, start, stop, size, path, unchecked)
