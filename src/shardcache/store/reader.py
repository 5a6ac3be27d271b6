"""Serve a published cache as a map-style Dataset of zero-copy, copy-on-write views.

Shards are memory-mapped private and read-only-shared (``MAP_PRIVATE``): every process
reads the same page-cache pages, and a transform that writes into a sample in place gets
its own copy of the page instead of changing the file or another process's data.

Everything a reader needs is held from the moment the cache is opened (``setup()``): each
shard is opened through the cache directory's descriptor (never through a symlink, a FIFO
never waited on), its size checked, and mapped; without mmap its descriptor is kept. An
unlinked file lives on while it is mapped or open, so ``shardcache clear`` cannot take a
shard away from a process that has the cache open, nor does a later ``os.chdir`` matter.
Each header is parsed on its shard's first read. A DataLoader worker started with
``fork`` inherits the mappings; one started with ``spawn`` or ``forkserver`` gets the
dataset pickled without them (mappings cannot be pickled) and opens the shards again by
name: if the cache was removed in between, its first read names the missing shard.
"""

from __future__ import annotations

import bisect
import functools
import mmap
import operator
import os
import weakref
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, get_worker_info

from ..core import settings
from ..core.dtypes import DTYPES_BY_CODE, view_of
from ..core.errors import CacheDirError, CorruptCacheError
from ..core.narrow import Narrow, Widening
from ..core.structure import unflatten
from ..core.types import Sample
from .format import Manifest, ShardInfo
from .fs import Directory
from .header import ShardHeader, TensorEntry, read_header, size_problem
from .layout import MANIFEST_NAME, CacheRoot
from .leases import Lease
from .readahead import (
    HEAD_BYTES,
    Hint,
    advise_now,
    file_hint,
    mapped_hint,
    span_cached,
    will_need_soon,
)
from .usage import touch_last_used


class _OpenShard:
    """One shard opened in this process: its mapping (or descriptor), its header when read."""

    def __init__(self, directory: Directory, info: ShardInfo, use_mmap: bool) -> None:
        self.info = info
        self.path = directory.child(info.file)
        self.storage: torch.UntypedStorage | None = None
        self._mapping: mmap.mmap | None = None
        self.descriptor = -1
        # Per (index, in a DataLoader worker): workers need views of their own (see _view).
        self._samples: dict[tuple[int, bool], tuple[dict[str, Any], list[torch.Tensor | Narrow]]]
        self._samples = {}
        self.read_from = False  # whether this process has read a sample of this shard
        try:
            descriptor = directory.open_file(info.file)
        except FileNotFoundError as error:
            raise CorruptCacheError(f"{self.path}: shard is missing", path=self.path) from error
        except OSError as error:  # a symlink or FIFO in its place, or no permission
            problem = str(error) if isinstance(error, CacheDirError) else error.strerror
            raise CorruptCacheError(
                f"{self.path}: shard cannot be opened: {problem}", path=self.path
            ) from error
        try:
            problem = size_problem(os.fstat(descriptor).st_size, info.bytes)
            if problem is not None:
                raise CorruptCacheError(f"{self.path}: {problem}", path=self.path)
            advise_now(file_hint(descriptor, 0, min(info.bytes, HEAD_BYTES)))  # the header
            if use_mmap:
                # MAP_PRIVATE: reads share the page cache, a write copies the page. The
                # mapping outlives the descriptor and the file's unlink.
                self._mapping = mmap.mmap(
                    descriptor,
                    info.bytes,
                    flags=mmap.MAP_PRIVATE,
                    prot=mmap.PROT_READ | mmap.PROT_WRITE,
                )
                self.storage = torch.frombuffer(self._mapping, dtype=torch.uint8).untyped_storage()
            else:
                # Held open like a mapping, so that reads outlive `shardcache clear` (an
                # unlink); closed when the shard is dropped, with no ResourceWarning to leak.
                self.descriptor, descriptor = descriptor, -1
                weakref.finalize(self, os.close, self.descriptor)
        except OSError as error:
            raise CorruptCacheError(
                f"{self.path}: shard cannot be mapped: {error}", path=self.path
            ) from error
        finally:
            if descriptor != -1:
                os.close(descriptor)

    @functools.cached_property
    def header(self) -> ShardHeader:
        """The header, parsed and checked on this shard's first read.

        Opening a cache reads no header, so a first batch does not wait for all of them;
        each sample's record is checked on that sample's first read.
        """
        header = read_header(
            self.path, opened=(self._read_at, self.info.bytes), check_records=False
        )
        if (header.start, header.stop) != (self.info.start, self.info.stop):
            raise CorruptCacheError(
                f"{self.path}: holds samples [{header.start}, {header.stop}), the "
                f"manifest says [{self.info.start}, {self.info.stop})",
                path=self.path,
            )
        return header

    def _read_at(self, offset: int, size: int) -> bytes:
        """Bytes of this shard from its mapping or descriptor (the file may be unlinked)."""
        if self._mapping is not None:
            return self._mapping[offset : offset + size]
        return os.pread(self.descriptor, size, offset)

    def prefetch(self, index: int) -> None:
        """Start reading sample ``index``'s bytes from the disk, without waiting for them.

        Only until this process reads the shard (a shard's first reads have no read-ahead
        history, so each would wait for the disk alone): from then on `LookaheadLoader`
        hints the batches ahead from the main process, and a hint here would cost every
        warm read a residency check. A plain DataLoader (one shardcache did not build)
        reads the rest of a cold epoch through page faults.
        """
        if not self.read_from:
            for begin, end in self._spans(index):
                advise_now(self._hint(begin, end))

    def lookahead_hints(self, index: int) -> list[Hint]:
        """Hints for the bytes of sample ``index`` that the page cache lacks.

        Without mmap, hints whatever the page cache holds.
        """
        hints = []
        for begin, end in self._spans(index):
            address = None if self.storage is None else self.storage.data_ptr() + begin
            if address is not None and span_cached(address, end - begin):
                continue
            hint = self._hint(begin, end)
            if hint is not None:
                hints.append(hint)
        return hints

    def _hint(self, begin: int, end: int) -> Hint | None:
        """A hint for bytes ``[begin, end)`` of this shard, through its mapping or descriptor."""
        if self.storage is None:
            return file_hint(self.descriptor, begin, end)
        return mapped_hint(self.storage.data_ptr() + begin, end - begin)

    def _spans(self, index: int) -> list[tuple[int, int]]:
        """The byte ranges ``[begin, end)`` of the shard that sample ``index``'s tensors fill.

        Tensors less than a page apart share a range. A sample's tensors need not lie
        together: a shard lays its tensors out widest dtype first (`shardfile`), so a dict
        sample's float32 target lies among the other samples' targets near the start, far
        from its uint8 image; one range from the first to the last would span most of the
        shard.
        """
        spans: list[tuple[int, int]] = []
        for entry in sorted(self._entries(index)[1], key=operator.attrgetter("begin")):
            if entry.end <= entry.begin:
                continue
            if spans and entry.begin - spans[-1][1] < mmap.PAGESIZE:
                spans[-1] = (spans[-1][0], max(spans[-1][1], entry.end))
            else:
                spans.append((entry.begin, entry.end))
        return spans

    def _view(self, entry: TensorEntry) -> torch.Tensor:
        """A zero-copy view of ``entry`` in the mapping."""
        assert self.storage is not None
        dtype = DTYPES_BY_CODE[entry.code]
        if get_worker_info() is not None:
            # In a DataLoader worker, a view of a storage *slice* (still zero-copy): a
            # worker that sends a view of the mapping's storage itself (batch_size=None,
            # or a collate that passes samples through) makes torch's reduce_storage move
            # the whole shard into shared memory; a slice is shared by copying this
            # sample's bytes only.
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

    def _entries(self, index: int) -> tuple[dict[str, Any], list[TensorEntry]]:
        """Sample ``index``'s record (checked) and where each of its tensors lies."""
        record = self.header.record(index)
        # Looked up by name, never by offset: a zero-size tensor shares its offset with the
        # next one.
        tensors = self.header.tensors
        return record, [tensors[f"{index}/{position}"] for position in range(record["tensors"])]

    def _stored(self, index: int) -> tuple[dict[str, Any], list[torch.Tensor | Narrow]]:
        """Sample ``index``'s skeleton and stored tensors (views built once per process)."""
        key = (index, get_worker_info() is not None)
        cached = self._samples.get(key)
        if cached is not None:
            return cached
        self.read_from = True
        record, entries = self._entries(index)
        widen = record.get("widen", {})
        leaves: list[torch.Tensor | Narrow] = []
        for position, entry in enumerate(entries):
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

    Opening reads the manifest, checks every shard's size (no data is read) and maps every
    shard (see the module docstring); full checksums are checked by ``shardcache verify``.

    Args:
        path: the published cache directory (made absolute).
        use_mmap: map shards (default: unless ``SHARDCACHE_MMAP=0``); without mmap each
            read copies the sample from the file.
        directory: ``path`` already opened (by `ensure_cache`, which checked whose it is).

    Raises:
        CorruptCacheError: the manifest or a shard fails a check; the message names it.
    """

    def __init__(
        self,
        path: str | PathLike[str],
        *,
        use_mmap: bool | None = None,
        directory: Directory | None = None,
    ) -> None:
        self.path = Path(path).absolute()
        self.use_mmap = settings.mmap_enabled() if use_mmap is None else use_mmap
        opened = directory if directory is not None else self._open_directory()
        try:
            self.manifest = Manifest.read_in(opened)
            # Held until close(): `shardcache prune` never removes a cache a live process
            # holds. Taken before the shards are opened, so that what they find stays there.
            self._lease = Lease.take(CacheRoot(self.path.parent).lease(self.manifest.key))
            try:
                self._starts = [shard.start for shard in self.manifest.shards]
                self._shards: list[_OpenShard] | None = self._open_all(opened)
                self._every_shard_read = False
                touch_last_used(opened)  # for `shardcache list` and `prune`
            except BaseException:
                if self._lease is not None:
                    self._lease.release()
                raise
        finally:
            if directory is None:
                opened.close()

    def _open_directory(self) -> Directory:
        """The cache directory, opened through its parent (a symlink to it is refused)."""
        try:
            with Directory.open_root(self.path.parent) as parent:
                return parent.subdir(self.path.name)
        except FileNotFoundError as error:
            manifest = self.path / MANIFEST_NAME
            raise CorruptCacheError(f"{manifest}: manifest is missing", path=manifest) from error
        except CacheDirError as error:
            raise CorruptCacheError(str(error), path=self.path) from error

    def __len__(self) -> int:
        return self.manifest.num_samples

    def labels(self) -> list[int | None]:
        """Every sample's label, from the manifest (no shard is read)."""
        return list(self.manifest.labels)

    def _open_all(self, directory: Directory) -> list[_OpenShard]:
        """Open and map every shard of ``directory`` (see the module docstring)."""
        return [_OpenShard(directory, info, self.use_mmap) for info in self.manifest.shards]

    def _shard(self, index: int) -> tuple[_OpenShard, int]:
        """The open shard holding sample ``index`` (negative counts from the end)."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} is out of range for {len(self)} samples")
        shards = self._shards if self._shards is not None else self._reopen()
        return shards[bisect.bisect_right(self._starts, index) - 1], index

    def _reopen(self) -> list[_OpenShard]:
        """Open the shards again, by name: unpickled in a spawned worker, or closed."""
        try:
            with self._open_directory() as directory:
                self._shards = self._open_all(directory)
                self._every_shard_read = False
        except CorruptCacheError as error:
            raise CorruptCacheError(
                f"{error} (this process opens the cache by name: it is a DataLoader worker "
                "started with spawn or forkserver, or reads after close(); a cache removed "
                "after setup() is gone for it)",
                path=error.path,
            ) from error
        return self._shards

    def __getitem__(self, index: int) -> Sample:
        shard, index = self._shard(index)
        return shard.sample(index)

    def prefetch(self, indices: Sequence[int]) -> None:
        """Ask the disk for these samples' bytes together (`readahead`), e.g. a batch's.

        A cold first batch then waits for its reads once, not once per sample. Free once
        this process has read every shard.
        """
        if self._every_shard_read:
            return
        for index in indices:
            shard, sample = self._shard(index)
            shard.prefetch(sample)
        shards = self._shards or ()
        self._every_shard_read = all(shard.read_from for shard in shards)

    def will_need(self, indices: Sequence[int]) -> None:
        """Ask the disk for these samples' bytes soon, e.g. for batches a sampler drew ahead.

        Unlike `prefetch`, also once this process has read their shards; a sample whose
        pages are cached costs a residency check, and the hints go to the kernel from a
        background thread (`readahead.will_need_soon`). Never raises: a sample that cannot
        be hinted (a damaged header, a bad index) is left to its read to report.
        """
        hints = []
        for index in indices:
            try:
                shard, sample = self._shard(index)
                hints += shard.lookahead_hints(sample)
            except (CorruptCacheError, IndexError, OSError):
                continue
        will_need_soon(hints)

    def lazy_sample(self, index: int) -> Sample:
        """Sample ``index`` with narrow tensors left as `Narrow`.

        For `BatchCollator`, which widens them straight into the batch.
        """
        shard, index = self._shard(index)
        return shard.sample(index, lazy=True)

    def __getstate__(self) -> dict[str, Any]:
        # Paths and the manifest only: mappings and file handles never cross processes
        # (a spawned worker opens the shards again, by name).
        state = self.__dict__.copy()
        state["_shards"] = None
        state["_lease"] = None  # a file descriptor: the process that opened the cache holds it
        state["_every_shard_read"] = False  # by this process: the next one reads afresh
        return state

    def close(self) -> None:
        """Drop this process's mappings and lease (tensors already served stay valid)."""
        self._shards = None  # a later read opens the shards again, by name
        self._every_shard_read = False
        if self._lease is not None:
            self._lease.release()
            self._lease = None
