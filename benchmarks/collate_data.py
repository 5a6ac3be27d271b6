"""The data of `benchmarks.collate`: raw loaders, and the stock baseline's safetensors views.

The raw loaders live in a module file of their own because shardcache's cache key hashes
their class source.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import torch


class SeededLevels:
    """Sample ``i``: seeded 8-bit noise loaded as float32 ``k / 255`` (exactly narrowable).

    What an 8-bit image loader returns (``uint8 -> float32 / 255``), without the decode.
    """

    def __init__(self, side: int = 512) -> None:
        self.side = side

    def sample(self, item: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        generator = torch.Generator().manual_seed(int(item))
        levels = torch.randint(0, 256, (1, self.side, self.side), generator=generator)
        return levels.to(torch.uint8).to(torch.float32).div_(255), {"index": int(item)}

    def label(self, item: Any) -> int:
        return int(item) % 2


class SeededNoise:
    """Sample ``i``: seeded uniform float32 noise (not narrowable: stored as it is)."""

    def __init__(self, side: int = 256) -> None:
        self.side = side

    def sample(self, item: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        generator = torch.Generator().manual_seed(int(item))
        return torch.rand((1, self.side, self.side), generator=generator), {"index": int(item)}

    def label(self, item: Any) -> int:
        return int(item) % 2


def read_safetensors_header(path: Path) -> tuple[int, dict[str, Any]]:
    """A safetensors file's data start and header: 8 bytes of length, then JSON."""
    with path.open("rb") as stream:
        (length,) = struct.unpack("<Q", stream.read(8))
        return 8 + length, json.loads(stream.read(length))


_DTYPES = {"F32": torch.float32, "F64": torch.float64, "U8": torch.uint8, "U16": torch.uint16}


def _strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Contiguous strides of ``shape``, in elements."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


class SafetensorsViews(torch.utils.data.Dataset[tuple[torch.Tensor, dict[str, Any]]]):
    """A hand-rolled reader of a cache's shards: a view of the mapping per sample.

    Parses each shard's safetensors header itself (tensor ``"i/0"`` is sample ``i``'s),
    maps each shard once per process (``UntypedStorage.from_file``, private, as shardcache
    does) and serves ``(view, {"index": i})``: what a stock DataLoader reads when someone
    writes the simplest zero-copy reader of these files. Nothing of shardcache is used.
    """

    def __init__(self, shard_paths: list[Path]) -> None:
        self.shards: list[tuple[str, int]] = []
        self.entries: list[tuple[int, int, torch.dtype, tuple[int, ...]]] = []
        found: dict[int, tuple[int, int, torch.dtype, tuple[int, ...]]] = {}
        for number, path in enumerate(shard_paths):
            data_start, header = read_safetensors_header(path)
            self.shards.append((str(path), path.stat().st_size))
            for name, info in header.items():
                if name == "__metadata__" or not name.endswith("/0"):
                    continue
                begin = data_start + info["data_offsets"][0]
                dtype = _DTYPES[info["dtype"]]
                found[int(name.split("/")[0])] = (number, begin, dtype, tuple(info["shape"]))
        self.entries = [found[index] for index in range(len(found))]
        self._pid = -1
        self._storages: list[Any] = []

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        if self._pid != os.getpid():  # a DataLoader worker maps the shards itself
            self._storages = [
                torch.UntypedStorage.from_file(path, shared=False, nbytes=size)
                for path, size in self.shards
            ]
            self._pid = os.getpid()
        shard, begin, dtype, shape = self.entries[index]
        view = torch.empty(0, dtype=dtype).set_(
            self._storages[shard], begin // dtype.itemsize, shape, _strides(shape)
        )
        return view, {"index": index}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_storages": [], "_pid": -1}
