"""Shard files written: safetensors with our own per-sample records (parsed by `header`).

Each sample ``i`` stores its tensor as ``"i"`` and each tensor-valued metadata field ``f`` as
``"i/f"``; the header's ``__metadata__["shardcache"]`` holds one JSON record per sample
(label, JSON metadata, which fields are tensors, and the field order). Tensors are laid out
by descending element size, so every tensor starts aligned to its dtype and can be served as
a view of the mapping. Any safetensors reader can open a shard.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import Any, BinaryIO

import torch
import xxhash

from ..core.decoding import Decoded
from ..core.dtypes import SAFETENSORS_CODES
from .format import FORMAT_VERSION
from .header import RECORD_KEY


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
