"""Serve a published cache as a map-style Dataset of zero-copy, copy-on-write views.

Shards are memory-mapped private and read-only-shared (``MAP_PRIVATE``): every process
reads the same page-cache pages, and a transform that writes into a sample in place gets
its own copy of the page instead of changing the file or another process's data. Mappings
open on a process's first read, all shards at once (each header is parsed on its shard's
first read), and are never pickled: a DataLoader worker started with ``spawn`` opens its
own, one started with ``fork`` inherits them.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import logging
import os
import weakref
from os import PathLike
from pathlib import Path
from typing import Any, cast

import torch
from torch.utils.data import Dataset, get_worker_info

from ..dtypes import view_of
from ..errors import ConfigurationError, CorruptCacheError
from ..samples import fresh_metadata
from ..typing import Sample
from .format import LAST_USED_NAME, MANIFEST_NAME, Manifest, ShardInfo
from .inventory import Lease
from .shardfile import ShardHeader, TensorEntry, read_header

logger = logging.getLogger(__name__)


def mmap_enabled() -> bool:
    """False when ``SHARDCACHE_MMAP=0`` asks for plain reads (for unreliable network mounts)."""
    value = os.environ.get("SHARDCACHE_MMAP", "1").strip().lower()
    if value not in {"0", "1", "false", "true", "no", "yes", ""}:
        raise ConfigurationError(f"SHARDCACHE_MMAP={value!r}: expected 0 or 1")
    return value not in {"0", "false", "no"}


class _OpenShard:
    """One shard opened in this process: its mapping (or file) now, its header when read."""

    def __init__(self, path: Path, info: ShardInfo, use_mmap: bool) -> None:
        self.info = info
        self.storage: torch.UntypedStorage | None = None
        self.path = path
        self.descriptor = -1
        self._views: dict[tuple[int, bool], torch.Tensor] = {}
        try:
            if use_mmap:
                # shared=False maps MAP_PRIVATE: reads share the page cache, a write copies
                # the page.
                mapped = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=info.bytes)
                self.storage = cast(torch.UntypedStorage, mapped)
            else:
                # Held open like a mapping, so that reads outlive `shardcache clear` (an
                # unlink); closed when the shard is dropped, with no ResourceWarning to leak.
                self.descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                weakref.finalize(self, os.close, self.descriptor)
        except (OSError, RuntimeError) as error:  # torch reports a failed open as RuntimeError
            problem = "shard is missing" if not path.exists() else f"cannot be opened: {error}"
            raise CorruptCacheError(f"{path}: {problem}", path=path) from error

    @functools.cached_property
    def header(self) -> ShardHeader:
        """The header, parsed and checked on this shard's first read.

        Opening a cache reads no header, so a first batch does not wait for all of them.
        """
        header = read_header(self.path, opened=(self._read_at, self.info.bytes))
        if (header.start, header.stop) != (self.info.start, self.info.stop):
            raise CorruptCacheError(
                f"{self.path}: holds samples [{header.start}, {header.stop}), the "
                f"manifest says [{self.info.start}, {self.info.stop})",
                path=self.path,
            )
        return header

    def _read_at(self, offset: int, size: int) -> bytes:
        """Bytes of this shard from its mapping or descriptor (the file may be unlinked)."""
        if self.storage is not None:
            end = min(offset + size, self.info.bytes)
            return (
                view_of(self.storage, offset, (max(end - offset, 0),), torch.uint8)
                .numpy()
                .tobytes()
            )
        return os.pread(self.descriptor, size, offset)

    def _view(self, storage: torch.UntypedStorage, entry: TensorEntry) -> torch.Tensor:
        """The view of ``entry`` that this process serves copies of (built once)."""
        in_worker = get_worker_info() is not None
        key = (entry.begin, in_worker)
        view = self._views.get(key)
        if view is None:
            if in_worker:
                # In a DataLoader worker, a view of a storage *slice* (still zero-copy): a
                # worker that sends a view of the from_file storage itself (batch_size=None,
                # or a collate that passes samples through) fails in torch's reduce_storage
                # (it dups the mapping's closed fd: EBADF) and the loader hangs; a slice is
                # shared by copying this sample's bytes only.
                window = storage[entry.begin : entry.end]
                view = view_of(window, 0, entry.shape, entry.dtype, entry.stride)
            else:
                offset = entry.begin // entry.dtype.itemsize
                view = view_of(storage, offset, entry.shape, entry.dtype, entry.stride)
            self._views[key] = view
        return view

    def tensor(self, entry: TensorEntry) -> torch.Tensor:
        """A view of the mapping (or, without mmap, a fresh tensor read from the file)."""
        if self.storage is not None:
            # A new tensor object over the same bytes (~0.5 us, against ~6 us to build a
            # view), so that what a caller does to the object itself stays with it.
            return self._view(self.storage, entry).detach()
        tensor = torch.empty(entry.shape, dtype=entry.dtype)
        buffer = tensor.reshape(-1).view(torch.uint8).numpy().data
        read = os.preadv(self.descriptor, [buffer], entry.begin)
        if read != entry.end - entry.begin:
            raise CorruptCacheError(f"{self.path}: short read of a tensor", path=self.path)
        return tensor

    def sample(self, index: int) -> Sample:
        position = index - self.header.start
        record = self.header.records[position]
        tensors = self.header.tensors
        tensor = self.tensor(tensors[str(index)])
        plain = fresh_metadata(record["metadata"])
        if "tensors" not in record:
            return tensor, plain
        # Views added after the copy: fresh_metadata deep-copies when a value is a list or
        # dict, and would copy the tensors (a segmentation mask) along with it.
        extra = {name: self.tensor(tensors[f"{index}/{name}"]) for name in record["tensors"]}
        return tensor, {
            name: extra[name] if name in extra else plain[name] for name in record["order"]
        }


class CacheDataset(Dataset[Sample]):
    """A published cache directory as a Dataset of ``(tensor, metadata)`` samples.

    Opening reads the manifest and checks every shard's size (no data is read); full
    checksums are checked by ``shardcache verify``.

    Args:
        path: the published cache directory.
        use_mmap: map shards (default: unless ``SHARDCACHE_MMAP=0``); without mmap each
            read copies the sample from the file.

    Raises:
        CorruptCacheError: the manifest or a shard fails a check; the message names it.
    """

    def __init__(self, path: str | PathLike[str], *, use_mmap: bool | None = None) -> None:
        self.path = Path(path)
        self.manifest = Manifest.read(self.path / MANIFEST_NAME)
        self.use_mmap = mmap_enabled() if use_mmap is None else use_mmap
        # Held until close(): `shardcache prune` never removes a cache a live process holds.
        # Taken before the shard checks, so that what they find stays there.
        self._lease = Lease.take(self.path.parent, self.manifest.key)
        try:
            for shard in self.manifest.shards:
                shard_path = self.path / shard.file
                try:
                    size = shard_path.stat().st_size
                except FileNotFoundError as error:
                    raise CorruptCacheError(
                        f"{shard_path}: shard is missing", path=shard_path
                    ) from error
                if size != shard.bytes:
                    raise CorruptCacheError(
                        f"{shard_path}: shard is {size} bytes, the manifest says {shard.bytes}",
                        path=shard_path,
                    )
        except BaseException:
            if self._lease is not None:
                self._lease.release()
            raise
        self._starts = [shard.start for shard in self.manifest.shards]
        self._shards: list[_OpenShard] | None = None
        self._touch_last_used()

    def _touch_last_used(self) -> None:
        """Record this use for ``shardcache list``/``prune``; a read-only cache is fine."""
        marker = self.path / LAST_USED_NAME
        with contextlib.suppress(OSError):
            marker.touch()

    def __len__(self) -> int:
        return self.manifest.num_samples

    def labels(self) -> list[int | None]:
        """Every sample's label, from the manifest (no shard is read)."""
        return list(self.manifest.labels)

    def _open_all(self) -> list[_OpenShard]:
        """Map every shard now, so that ``shardcache clear`` cannot take one away mid-epoch.

        (It unlinks files; a mapping outlives the unlink.)
        """
        shards = [
            _OpenShard(self.path / info.file, info, self.use_mmap) for info in self.manifest.shards
        ]
        self._shards = shards
        return shards

    def __getitem__(self, index: int) -> Sample:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} is out of range for {len(self)} samples")
        shards = self._shards if self._shards is not None else self._open_all()
        return shards[bisect.bisect_right(self._starts, index) - 1].sample(index)

    def __getstate__(self) -> dict[str, Any]:
        # Paths and the manifest only: mappings and file handles never cross processes.
        state = self.__dict__.copy()
        state["_shards"] = None
        state["_lease"] = None  # a file descriptor: the process that opened the cache holds it
        return state

    def close(self) -> None:
        """Drop this process's mappings and lease (tensors already served stay valid)."""
        self._shards = None
        if self._lease is not None:
            self._lease.release()
            self._lease = None
