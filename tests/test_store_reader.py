"""The reader: zero-copy views of private (copy-on-write) mappings, opened lazily per process.

Mappings are observed where the kernel reports them, in ``/proc/self/maps``.
"""

from __future__ import annotations

import json
import multiprocessing
import pickle
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from shardcache import CachingDataModule, CorruptCacheError
from shardcache.store import CacheDataset, ensure_cache
from shardcache.store.header import file_digest
from shardcache.tiers.none import RawDataset
from support.loaders import (
    RichLoader,
    SeededLoader,
    make_items,
    rich_items,
    zero_in_place_keep_input,
    zero_served_sample,
)
from support.processes import DEADLINE, wait_for
from support.samples import dataset_differences, tensor_bytes

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/maps").exists(), reason="reads the process's mappings from /proc"
)

SIDE = 64  # 16 KiB float32 samples


def mappings_of(path: Path) -> list[tuple[int, int, str]]:
    """``(start, end, permissions)`` of every mapping of ``path`` in this process."""
    target = str(path.resolve())
    found = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == target:
            start, end = (int(address, 16) for address in fields[0].split("-"))
            found.append((start, end, fields[1]))
    return found


def shard_paths(dataset: CacheDataset) -> list[Path]:
    return [dataset.path / shard.file for shard in dataset.manifest.shards]


def data_offset(shard: Path, name: str) -> int:
    """Where tensor ``name`` starts in the shard file, from its safetensors header."""
    raw = shard.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return 8 + length + json.loads(raw[8 : 8 + length])[name]["data_offsets"][0]


def checksums(dataset: CacheDataset) -> dict[str, str]:
    """Each shard's xxh3 as read from the file now, by name."""
    return {path.name: file_digest(path) for path in shard_paths(dataset)}


def recorded_checksums(dataset: CacheDataset) -> dict[str, str]:
    return {shard.file: shard.xxh3_128 for shard in dataset.manifest.shards}


@pytest.fixture
def cache(decode_log: Path, cache_dir: Path) -> CacheDataset:
    loader = SeededLoader(decode_log, side=SIDE)
    return ensure_cache(cache_dir, "train", make_items(8), loader)


def expected_samples(tmp_path: Path, count: int = 8) -> list[Any]:
    raw = RawDataset("train", make_items(count), SeededLoader(tmp_path / "x", side=SIDE))
    return [raw[index] for index in range(count)]


# ---- zero-copy ----------------------------------------------------------------------------


def test_samples_and_metadata_tensors_are_views_into_a_private_mapping(
    tmp_path: Path, cache_dir: Path
) -> None:
    dataset = ensure_cache(cache_dir, "train", rich_items(6), RichLoader(tmp_path / "l"))
    (shard,) = shard_paths(dataset)
    tensor, metadata = dataset[3]
    again, _ = dataset[3]

    (mapping,) = [m for m in mappings_of(shard) if m[0] <= tensor.data_ptr() < m[1]]
    start, end, permissions = mapping
    assert permissions.endswith("p")  # MAP_PRIVATE: a write copies the page
    assert end - start >= shard.stat().st_size
    assert tensor.data_ptr() - start == data_offset(shard, "3/0")
    assert metadata["mask"].data_ptr() - start == data_offset(shard, "3/1")
    # Views of the process's one mapping (the main process skips a worker's storage slice).
    assert tensor.untyped_storage().data_ptr() == start
    assert again.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr()
    assert len(mappings_of(shard)) == 1  # reads reuse the process's one mapping


def test_without_mmap_samples_are_plain_reads(
    cache: CacheDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHARDCACHE_MMAP", "0")
    before = mappings_of(shard_paths(cache)[0])  # the fixture's own mapping
    plain = CacheDataset(cache.path)

    served = [plain[index] for index in range(len(plain))]
    mapped = mappings_of(shard_paths(plain)[0])
    plain.close()  # closes its file handles

    assert dataset_differences(expected_samples(tmp_path), served) == []
    assert mapped == before


# ---- copy-on-write ----------------------------------------------------------------------------


def read_before_and_after(path: Path, ready: Path, go: Path, out: Path) -> None:
    """Another process: map the cache, read, wait, read again from the same mapping."""
    dataset = CacheDataset(path)
    before = tensor_bytes(dataset[0][0])
    ready.touch()
    wait_for(go)
    out.write_bytes(before + tensor_bytes(dataset[0][0]))


def test_an_in_place_write_to_a_view_reaches_neither_the_file_nor_another_process(
    cache: CacheDataset, tmp_path: Path
) -> None:
    original = tensor_bytes(expected_samples(tmp_path)[0][0])
    ready, go, out = tmp_path / "ready", tmp_path / "go", tmp_path / "out"
    other = multiprocessing.get_context("fork").Process(
        target=read_before_and_after, args=(cache.path, ready, go, out)
    )
    other.start()
    try:
        wait_for(ready)
        cache[0][0].mul_(0)  # straight into this process's mapping, no transform in between
        written = cache[0][0]
        go.touch()
        other.join(DEADLINE)
    finally:
        other.kill()

    assert not written.any()  # the write did land in the mapping this process reads
    assert other.exitcode == 0
    assert out.read_bytes() == original + original
    assert checksums(cache) == recorded_checksums(cache)
    assert tensor_bytes(CacheDataset(cache.path)[0][0]) == original


def zeroing_datamodule(log: Path, cache_dir: Path, **options: Any) -> CachingDataModule:
    """The disk tier with a model transform that zeroes each served tensor in place."""
    return CachingDataModule(
        {"train": make_items(8)},
        SeededLoader(log, side=SIDE),
        model_transforms=[zero_in_place_keep_input],
        batch_size=4,
        cache="disk",
        cache_dir=cache_dir,
        **options,
    )


def test_an_in_place_model_transform_leaves_the_next_epoch_untouched(
    tmp_path: Path, decode_log: Path, cache_dir: Path
) -> None:
    datamodule = zeroing_datamodule(decode_log, cache_dir)
    datamodule.setup("fit")
    loader = datamodule.unshuffled_train_dataloader()
    dataset = loader.dataset.dataset  # under the TransformedDataset

    epochs = [[batch[0].clone() for batch in loader] for _ in range(2)]

    expected = torch.stack([tensor for tensor, _ in expected_samples(tmp_path)])
    assert all(torch.equal(torch.cat(epoch), expected) for epoch in epochs)
    assert checksums(dataset) == recorded_checksums(dataset)
    assert dataset_differences(expected_samples(tmp_path), dataset) == []


@pytest.mark.slow
def test_in_place_writes_in_workers_leave_the_cache_and_the_parent_untouched(
    tmp_path: Path,
    decode_log: Path,
    cache_dir: Path,
) -> None:
    datamodule = zeroing_datamodule(decode_log, cache_dir, parallel=2)
    datamodule.setup("fit")
    loader = datamodule.unshuffled_train_dataloader()
    dataset = loader.dataset.dataset
    expected = expected_samples(tmp_path)
    dataset[0]  # map the shards before the workers fork, so they share the parent's mapping

    transformed = [[batch[0].clone() for batch in loader] for _ in range(2)]  # persistent workers
    # Zero the dataset's own views inside the workers (no clone in between).
    zeroed_in_workers = list(
        DataLoader(
            dataset, batch_size=None, num_workers=2, collate_fn=zero_served_sample, timeout=DEADLINE
        )
    )

    stacked = torch.stack([tensor for tensor, _ in expected])
    assert all(torch.equal(torch.cat(epoch), stacked) for epoch in transformed)
    assert all(torch.equal(a, b) for a, (b, _) in zip(zeroed_in_workers, expected, strict=True))
    assert dataset_differences(expected, dataset) == []
    assert checksums(dataset) == recorded_checksums(dataset)


# ---- lazy and light ---------------------------------------------------------------------------


def test_labels_come_from_the_manifest_and_an_open_cache_outlives_its_files(
    cache: CacheDataset, tmp_path: Path
) -> None:
    dataset = CacheDataset(cache.path)
    shards = shard_paths(dataset)
    for shard in shards:
        shard.unlink()  # `shardcache clear` after setup(): what was opened stays readable

    labels = dataset.labels()

    assert labels == [item[1] for item in make_items(8)]
    assert dataset_differences(expected_samples(tmp_path), dataset) == []
    with pytest.raises(CorruptCacheError, match="shard is missing"):
        CacheDataset(cache.path)


def test_opening_maps_every_shard_and_a_read_maps_nothing_more(cache: CacheDataset) -> None:
    (shard,) = shard_paths(cache)
    mapped_before = len(mappings_of(shard))
    dataset = CacheDataset(cache.path)

    opened = len(mappings_of(shard))
    dataset[5]

    assert (opened, len(mappings_of(shard))) == (mapped_before + 1, mapped_before + 1)


def test_the_dataset_pickles_without_its_mappings(cache: CacheDataset, tmp_path: Path) -> None:
    cache[0]  # mapped now
    (shard,) = shard_paths(cache)
    mapped = len(mappings_of(shard))

    data = pickle.dumps(cache)
    copy = pickle.loads(data)  # noqa: S301 (bytes we just pickled)
    unread = len(mappings_of(shard))

    assert len(data) < 4096 < shard.stat().st_size
    assert unread == mapped
    assert dataset_differences(expected_samples(tmp_path), copy) == []
    assert len(mappings_of(shard)) == mapped + 1  # the copy mapped the shard on its first read


def test_forked_workers_can_send_mapped_views(cache: CacheDataset, tmp_path: Path) -> None:
    """batch_size=None sends each view itself through the worker queue (no collate copy)."""
    cache[0]  # the parent's mapping is inherited by the forked workers
    context = multiprocessing.get_context("fork")

    served = list(
        DataLoader(
            cache, batch_size=None, num_workers=2, timeout=DEADLINE, multiprocessing_context=context
        )
    )

    assert dataset_differences(expected_samples(tmp_path), served) == []


@pytest.mark.slow
def test_a_spawn_context_dataloader_with_two_workers_serves_the_same(
    cache: CacheDataset, tmp_path: Path
) -> None:
    cache[0]  # mapped in the parent; spawned workers unpickle the dataset and map their own
    context = multiprocessing.get_context("spawn")

    served = list(
        DataLoader(
            cache, batch_size=None, num_workers=2, timeout=DEADLINE, multiprocessing_context=context
        )
    )

    assert dataset_differences(expected_samples(tmp_path), served) == []
