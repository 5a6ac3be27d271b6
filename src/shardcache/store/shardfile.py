"""Shard files written: safetensors with our own per-sample records (parsed by `header`).

Sample ``i``'s tensors are stored as ``"i/0"``, ``"i/1"``... in the order of its skeleton
(`shardcache.core.samples.flatten`); the header's ``__metadata__["shardcache"]`` holds one
JSON record per sample: its label, its skeleton (the structure, JSON values and tensor
classes), its tensor count, and how its narrow tensors widen (``"widen"``). Tensors are laid
out by descending element size, so every tensor starts aligned to its dtype and can be
served as a view of the mapping. Any safetensors reader can open a shard.
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
from ..core.narrow import Narrow
from .codec import Encoded
from .format import FORMAT_VERSION
from .header import RECORD_KEY, ShardHeader, TensorEntry


def _flat_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``'s data as a contiguous CPU uint8 vector (a copy only when needed)."""
    dense = tensor.detach().as_subclass(torch.Tensor).contiguous()
    return dense.reshape(-1).view(torch.uint8)


def tensor_name(index: int, position: int) -> str:
    """The safetensors name of sample ``index``'s tensor at skeleton ``position``."""
    return f"{index}/{position}"


def sample_record(sample: Decoded[Encoded]) -> dict[str, Any]:
    """One sample's JSON record: its label, skeleton, tensor count, and narrow tensors."""
    encoded = sample.value
    record: dict[str, Any] = {
        "label": sample.label,
        "sample": encoded.skeleton,
        "tensors": len(encoded.tensors),
    }
    widen = {
        str(position): tensor.widening.to_json()
        for position, tensor in enumerate(encoded.tensors)
        if isinstance(tensor, Narrow)
    }
    if widen:
        record["widen"] = widen
    return record


def _named_tensors(samples: Sequence[Decoded[Encoded]]) -> list[tuple[str, torch.Tensor]]:
    return [
        (tensor_name(sample.index, position), tensor.data if isinstance(tensor, Narrow) else tensor)
        for sample in samples
        for position, tensor in enumerate(sample.value.tensors)
    ]


def write_shard(stream: BinaryIO, samples: Sequence[Decoded[Encoded]]) -> tuple[ShardHeader, str]:
    """Write ``samples`` (consecutive indices) as one safetensors file.

    Returns:
        The header as `read_header` would parse it from the file, and the file's xxh3-128.

    Raises:
        ValueError: a tensor's dtype has no safetensors code (the caller names the sample).
    """
    named = _named_tensors(samples)
    # Widest dtypes first: every tensor then starts aligned to its element size.
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
    start, stop = samples[0].index, samples[-1].index + 1
    records = [sample_record(sample) for sample in samples]
    record_text = json.dumps(
        {"format_version": FORMAT_VERSION, "start": start, "stop": stop, "samples": records},
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
    data_start = 8 + len(header_bytes)
    entries = {
        name: TensorEntry(
            info["dtype"],
            tuple(info["shape"]),
            data_start + info["data_offsets"][0],
            data_start + info["data_offsets"][1],
        )
        for name, info in header.items()
        if name != "__metadata__"
    }
    written = ShardHeader(entries, records, start, stop, data_start + offset)
    return written, hasher.hexdigest()
