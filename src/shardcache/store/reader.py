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
import functools
import os
import weakref
from os import PathLike
from pathlib import Path
from typing import Any, cast

import torch
from torch.utils.data import Dataset, get_worker_info

from ..core import settings
from ..core.dtypes import DTYPES_BY_CODE, view_of
from ..core.errors import CorruptCacheError
from ..core.narrow import Narrow, Widening
from ..core.samples import unflatten
from ..core.types import Sample
from .format import Manifest, ShardInfo
from .header import ShardHeader, TensorEntry, read_header
from .layout import MANIFEST_NAME, CacheRoot
from .locking import Lease
from .usage import touch_last_used
from .verification import check_sizes


class _OpenShard:
    """One shard opened in this process: its mapping (or file) now, its header when read."""

    def __init__(self, path: Path, info: ShardInfo, use_mmap: bool) -> None:
        self.info = info
        self.storage: torch.UntypedStorage | None = None
        self.path = path
        self.descriptor = -1
        # Per (index, in a DataLoader worker): workers need views of their own (see _view).
        self._samples: dict[tuple[int, bool], tuple[dict[str, Any], list[torch.Tensor | Narrow]]]
        self._samples = {}
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

    def _view(self, entry: TensorEntry) -> torch.Tensor:
        """A zero-copy view of ``entry`` in the mapping."""
        assert self.storage is not None
        dtype = DTYPES_BY_CODE[entry.code]
        if get_worker_info() is not None:
            # In a DataLoader worker, a view of a storage *slice* (still zero-copy): a
            # worker that sends a view of the from_file storage itself (batch_size=None,
            # or a collate that passes samples through) fails in torch's reduce_storage
            # (it dups the mapping's closed fd: EBADF) and the loader hangs; a slice is
            # shared by copying this sample's bytes only.
            window = self.storage[entry.begin : entry.end]
            return view_of(window, 0, entry.shape, dtype)
        return view_of(self.storage, entry.begin // entry.itemsize, entry.shape, dtype)

    def _read(self, entry: TensorEntry) -> torch.Tensor:
        """A fresh tensor holding ``entry``, read from the file (without mmap)."""
        tensor = torch.empty(entry.shape, dtype=DTYPES_BY_CODE[entry.code])
        if entry.end > entry.begin:
            buffer = tensor.reshape(-1).view(torch.uint8).numpy().data
            read = os.preadv(self.descriptor, [buffer], entry.begin)
            if read != entry.end - entry.begin:
                raise CorruptCacheError(f"{self.path}: short read of a tensor", path=self.path)
        return tensor

    def _stored(self, index: int) -> tuple[dict[str, Any], list[torch.Tensor | Narrow]]:
        """Sample ``index``'s skeleton and stored tensors (views built once per process)."""
        key = (index, get_worker_info() is not None)
        cached = self._samples.get(key)
        if cached is not None:
            return cached
        record = self.header.records[index - self.header.start]
        widen = record.get("widen", {})
        leaves: list[torch.Tensor | Narrow] = []
        for position in range(record["tensors"]):
            # Looked up by name, never by offset: a zero-size tensor shares its offset with
            # the next one.
            entry = self.header.tensors[f"{index}/{position}"]
            tensor = self._view(entry) if self.storage is not None else self._read(entry)
            spec = widen.get(str(position))
            leaves.append(tensor if spec is None else Narrow(tensor, Widening.from_json(spec)))
        stored = (record["sample"], leaves)
        if self.storage is not None:  # without mmap, every read is a fresh read
            self._samples[key] = stored
        return stored

    def sample(self, index: int, *, lazy: bool = False) -> Sample:
        """Sample ``index``; narrow tensors widened, or (``lazy``) left as `Narrow`."""
        skeleton, leaves = self._stored(index)
        # New tensor objects over the same bytes (~0.5 us, against ~6 us to build a view),
        # so that what a caller does to the object itself stays with it.
        served = [
            leaf.detach() if isinstance(leaf, torch.Tensor) else leaf if lazy else leaf.widen()
            for leaf in leaves
        ]
        return unflatten(skeleton, served)  # type: ignore[arg-type]


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
        self.use_mmap = settings.mmap_enabled() if use_mmap is None else use_mmap
        # Held until close(): `shardcache prune` never removes a cache a live process holds.
        # Taken before the shard checks, so that what they find stays there.
        self._lease = Lease.take(CacheRoot(self.path.parent).lease(self.manifest.key))
        try:
            check_sizes(self.path, self.manifest)
        except BaseException:
            if self._lease is not None:
                self._lease.release()
            raise
        self._starts = [shard.start for shard in self.manifest.shards]
        self._shards: list[_OpenShard] | None = None
        touch_last_used(self.path)  # for `shardcache list` and `prune`

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

    def _shard(self, index: int) -> tuple[_OpenShard, int]:
        """The open shard holding sample ``index`` (negative counts from the end)."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} is out of range for {len(self)} samples")
        shards = self._shards if self._shards is not None else self._open_all()
        return shards[bisect.bisect_right(self._starts, index) - 1], index

    def __getitem__(self, index: int) -> Sample:
        shard, index = self._shard(index)
        return shard.sample(index)

    def lazy_sample(self, index: int) -> Sample:
        """Sample ``index`` with narrow tensors left as `Narrow`.

        For `BatchCollator`, which widens them straight into the batch.
        """
        shard, index = self._shard(index)
        return shard.sample(index, lazy=True)

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
