"""Shard files: safetensors written with our own per-sample records, read without copies.

Each sample ``i`` stores its tensor as ``"i"`` and each tensor-valued metadata field ``f`` as
``"i/f"``; the header's ``__metadata__["shardcache"]`` holds one JSON record per sample
(label, JSON metadata, which fields are tensors, and the field order). Tensors are laid out
by descending element size, so every tensor starts aligned to its dtype and can be served as
a view of the mapping. Any safetensors reader can open a shard.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
import xxhash

from ..decoding import Decoded
from ..dtypes import DTYPES_BY_CODE, SAFETENSORS_CODES, contiguous_strides
from ..errors import CorruptCacheError
from .format import FORMAT_VERSION

RECORD_KEY = "shardcache"
MAX_HEADER_BYTES = 100_000_000
"""safetensors' own limit on header size."""


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lies in a shard file (byte offsets from the file's start)."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int
    stride: tuple[int, ...]


@dataclass(frozen=True)
class ShardHeader:
    """A shard's parsed header: its tensors and per-sample records."""

    tensors: dict[str, TensorEntry]
    records: list[dict[str, Any]]
    start: int
    stop: int
    file_bytes: int


def _flat_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``'s data as a contiguous CPU uint8 vector (a copy only when needed)."""
    dense = tensor.detach().cpu().resolve_conj().resolve_neg().contiguous()
    return dense.reshape(-1).view(torch.uint8)


def encode_records(
    samples: Sequence[Decoded],
) -> tuple[list[dict[str, Any]], list[tuple[str, torch.Tensor]]]:
    """Split samples into JSON records and named tensors."""
    records: list[dict[str, Any]] = []
    tensors: list[tuple[str, torch.Tensor]] = []
    for sample in samples:
        tensors.append((str(sample.index), sample.tensor))
        plain: dict[str, Any] = {}
        tensor_fields: list[str] = []
        for name, value in sample.metadata.items():
            if isinstance(value, torch.Tensor):
                tensor_fields.append(name)
                tensors.append((f"{sample.index}/{name}", value))
            else:
                plain[name] = value
        record: dict[str, Any] = {"label": sample.label, "metadata": plain}
        if tensor_fields:
            record["tensors"] = tensor_fields
            record["order"] = list(sample.metadata)
        records.append(record)
    return records, tensors


def write_shard(stream: BinaryIO, samples: Sequence[Decoded]) -> tuple[int, str]:
    """Write ``samples`` (consecutive indices) as one safetensors file; return size and xxh3.

    Raises:
        ValueError: a tensor's dtype has no safetensors code (the caller names the sample).
    """
    records, named = encode_records(samples)
    order = sorted(range(len(named)), key=lambda i: -named[i][1].element_size())
    header: dict[str, Any] = {}
    payloads: list[torch.Tensor] = []
    offset = 0
    for position in order:
        name, tensor = named[position]
        code = SAFETENSORS_CODES.get(tensor.dtype)
        if code is None:
            raise ValueError(f"tensor {name!r} has dtype {tensor.dtype}, which cannot be stored")
        payload = _flat_bytes(tensor)
        header[name] = {
            "dtype": code,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + payload.numel()],
        }
        payloads.append(payload)
        offset += payload.numel()
    record_text = json.dumps(
        {
            "format_version": FORMAT_VERSION,
            "start": samples[0].index,
            "stop": samples[-1].index + 1,
            "samples": records,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )
    header["__metadata__"] = {RECORD_KEY: record_text}
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    # safetensors pads the header with spaces so tensor data starts 8-byte aligned.
    header_bytes += b" " * (-(8 + len(header_bytes)) % 8)
    hasher = xxhash.xxh3_128()
    for chunk in (struct.pack("<Q", len(header_bytes)), header_bytes):
        stream.write(chunk)
        hasher.update(chunk)
    for payload in payloads:
        view = payload.numpy().data
        stream.write(view)
        hasher.update(view)
    return 8 + len(header_bytes) + offset, hasher.hexdigest()


def file_digest(path: Path) -> str:
    """xxh3-128 of a whole file, read in 8 MiB pieces."""
    hasher = xxhash.xxh3_128()
    with path.open("rb") as stream:
        while chunk := stream.read(8 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


ReadAt = Callable[[int, int], bytes]
"""``read_at(offset, size)``: bytes of an already opened shard (a mapping or a descriptor)."""


def _header_bytes(path: Path, read_at: ReadAt, size: int) -> bytes:
    """The raw JSON header of a shard of ``size`` bytes."""
    prefix = read_at(0, 8) if size >= 8 else b""
    if len(prefix) < 8:
        raise _corrupt(path, "shard is shorter than a safetensors header")
    (length,) = struct.unpack("<Q", prefix)
    if length > min(MAX_HEADER_BYTES, size - 8):
        raise _corrupt(path, f"shard header length {length} exceeds what the file holds")
    return read_at(8, length)


def _read_header_bytes(path: Path, expected_bytes: int | None) -> tuple[bytes, int]:
    """The raw JSON header and the size of the file at ``path``."""
    try:
        with path.open("rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            if expected_bytes is not None and size != expected_bytes:
                raise _corrupt(path, f"shard is {size} bytes, the manifest says {expected_bytes}")
            return _header_bytes(
                path, lambda offset, n: os.pread(stream.fileno(), n, offset), size
            ), size
    except FileNotFoundError as error:
        raise _corrupt(path, "shard is missing") from error
    except OSError as error:
        raise _corrupt(path, f"shard cannot be read: {error}") from error


def _corrupt(path: Path, problem: str) -> CorruptCacheError:
    return CorruptCacheError(f"{path}: {problem}", path=path)


def _tensor_entries(path: Path, header: dict[str, Any], data_start: int) -> dict[str, TensorEntry]:
    """Check each tensor's entry, and that together they cover the data without holes."""
    tensors: dict[str, TensorEntry] = {}
    for name, info in header.items():
        try:
            dtype = DTYPES_BY_CODE[info["dtype"]]
            shape = tuple(int(n) for n in info["shape"])
            begin, end = (int(n) for n in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as error:
            raise _corrupt(path, f"tensor {name!r} has a malformed entry ({error!r})") from error
        numel = math.prod(shape)
        if begin < 0 or end - begin != numel * dtype.itemsize:
            raise _corrupt(path, f"tensor {name!r} spans {end - begin} bytes, unlike its shape")
        if begin % dtype.itemsize:
            raise _corrupt(path, f"tensor {name!r} is not aligned to its dtype")
        tensors[name] = TensorEntry(
            dtype, shape, data_start + begin, data_start + end, contiguous_strides(shape)
        )
    covered = data_start
    for entry in sorted(tensors.values(), key=lambda entry: entry.begin):
        if entry.begin != covered:
            raise _corrupt(path, "shard tensor data has holes or overlaps")
        covered = entry.end
    return tensors


def read_header(
    path: Path,
    *,
    expected_bytes: int | None = None,
    opened: tuple[ReadAt, int] | None = None,
) -> ShardHeader:
    """Parse and check a shard's header; `CorruptCacheError` names the file and the lie.

    Args:
        path: the shard file, read unless ``opened`` is given; named in errors.
        expected_bytes: the size the manifest promises.
        opened: ``(read_at, size)`` of a shard already mapped or opened, which reads it
            even after its file was unlinked.
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
    except (ValueError, KeyError, TypeError, AttributeError) as error:
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
    for offset, sample in enumerate(records):
        index = start + offset
        if (
            str(index) not in tensors
            or not isinstance(sample, dict)
            or not isinstance(sample.get("metadata"), dict)
            or not isinstance(sample.get("tensors", []), list)
            or ("tensors" in sample and not isinstance(sample.get("order"), list))
            or any(f"{index}/{name}" not in tensors for name in sample.get("tensors", ()))
        ):
            raise _corrupt(path, f"sample {index} has a malformed record or lacks a tensor")
    return ShardHeader(tensors, records, start, stop, size)
