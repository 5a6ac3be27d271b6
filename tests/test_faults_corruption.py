"""Damaged caches: detected cheaply at open and rebuilt, or refused naming the file.

Opening a published cache reads its manifest and checks every shard's size and the format
version; those lies are caught at once and `ensure_cache` (and so the DataModule) logs why
and rebuilds. Bytes flipped inside tensor data keep every size, so they are not caught at
open, by design (no full read at open): ``shardcache verify`` compares each shard's
checksum, and `file_digest` here shows that it would differ. Shards left in a staging
directory by a dead build are checked (range, header, checksum) before a resume reuses them.
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import xxhash

from shardcache.errors import CorruptCacheError
from shardcache.store import CacheDataset, ensure_cache
from shardcache.store.format import Manifest
from shardcache.store.header import file_digest, read_header
from shardcache.store.layout import MANIFEST_NAME, SHARD_NAME, shard_name
from shardcache.store.verification import verify_cache
from support.builds import (
    SHARD_BYTES,
    child_build,
    child_spec,
    leftovers,
    published,
    staged_samples,
)
from support.crash import CRASH_EXIT
from support.decodes import decode_count
from support.loaders import (
    N_ITEMS,
    SizedLoader,
    SlowLoader,
    make_items,
    reference_digest,
    reference_sample,
    sized_sample,
)
from support.processes import fork_child
from support.samples import dataset_digest, sample_differences

REFERENCE = reference_digest(make_items())


def _ensure(cache_dir: Path, count_file: Path, tag: str, items: list | None = None) -> CacheDataset:
    loader = SlowLoader(count_file, tag=tag)
    items = make_items() if items is None else items
    return ensure_cache(cache_dir, "train", items, loader, shard_bytes=SHARD_BYTES)


@pytest.fixture
def built(decode_log: Path, cache_dir: Path) -> Path:
    """A published cache of the test items, built in ``cache_dir``."""
    _ensure(cache_dir, decode_log, "build").close()
    [path] = published(cache_dir)
    return path


def _shard(path: Path, position: int) -> Path:
    manifest = Manifest.read(path / MANIFEST_NAME)
    return path / manifest.shards[position].file


def _truncate_shard(path: Path) -> Path:
    shard = _shard(path, 3)
    with shard.open("r+b") as stream:
        stream.truncate(shard.stat().st_size - 100)
    return shard


def _delete_shard(path: Path) -> Path:
    shard = _shard(path, 5)
    shard.unlink()
    return shard


def _garbage_manifest(path: Path) -> Path:
    (path / MANIFEST_NAME).write_bytes(bytes(range(256)) * 4)
    return path / MANIFEST_NAME


def _truncated_manifest(path: Path) -> Path:
    manifest = path / MANIFEST_NAME
    manifest.write_bytes(manifest.read_bytes()[: manifest.stat().st_size // 2])
    return manifest


def _empty_manifest(path: Path) -> Path:
    (path / MANIFEST_NAME).write_bytes(b"")
    return path / MANIFEST_NAME


def _future_format(path: Path) -> Path:
    manifest = path / MANIFEST_NAME
    data = json.loads(manifest.read_text())
    data["format_version"] = 99
    manifest.write_text(json.dumps(data))
    return manifest


def _wrong_size_in_manifest(path: Path) -> Path:
    manifest = path / MANIFEST_NAME
    data = json.loads(manifest.read_text())
    data["shards"][2]["bytes"] += 8
    manifest.write_text(json.dumps(data))
    return path / data["shards"][2]["file"]


DAMAGE: dict[str, tuple[Callable[[Path], Path], str]] = {
    "truncated shard": (_truncate_shard, "shard is {size} bytes, the manifest says"),
    "deleted shard": (_delete_shard, "shard is missing"),
    "garbage manifest": (_garbage_manifest, "manifest cannot be read"),
    "truncated manifest": (_truncated_manifest, "manifest is not valid JSON"),
    "empty manifest": (_empty_manifest, "manifest is not valid JSON"),
    "format_version 99": (_future_format, "unsupported cache format version 99"),
    "shard size lie in manifest": (_wrong_size_in_manifest, "the manifest says"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damage_detected_at_open_is_rebuilt(
    built: Path, decode_log: Path, cache_dir: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    corrupt, expected = DAMAGE[damage]
    damaged = corrupt(built)
    if damaged.exists():
        expected = expected.format(size=damaged.stat().st_size)
    caplog.set_level(logging.WARNING, logger="shardcache")
    dataset = _ensure(cache_dir, decode_log, "rebuild")
    assert dataset_digest(dataset) == REFERENCE
    assert decode_count(decode_log, "rebuild") == N_ITEMS
    # Logged: which cache, which file, what is wrong with it.
    [warning] = [r.message for r in caplog.records if "will be rebuilt" in r.message]
    assert f"cache {built.name} is damaged and will be rebuilt: {damaged}: " in warning
    assert expected in warning, warning
    dataset.close()
    assert _ensure(cache_dir, decode_log, "after").manifest.key
    assert decode_count(decode_log, "after") == 0
    assert leftovers(cache_dir) == []
    assert [p.name for p in published(cache_dir)] == [built.name]


def test_a_cache_directory_renamed_from_another_key_is_not_served(
    decode_log: Path, cache_dir: Path
) -> None:
    ours = _ensure(cache_dir, decode_log, "ours")
    theirs = _ensure(cache_dir, decode_log, "theirs", make_items(prefix="scan"))
    ours_path, theirs_path = ours.path, theirs.path
    ours.close()
    theirs.close()
    shutil.rmtree(ours_path)
    theirs_path.rename(ours_path)  # by hand, or a botched copy: the name says "ours"
    dataset = _ensure(cache_dir, decode_log, "again")
    assert dataset_digest(dataset) == REFERENCE
    assert decode_count(decode_log, "again") == N_ITEMS


def test_flipped_tensor_bytes_are_left_to_verify(
    built: Path, decode_log: Path, cache_dir: Path
) -> None:
    shard = _shard(built, 4)
    header = read_header(shard)
    first = header.tensors[f"{header.start}/0"]
    with shard.open("r+b") as stream:
        stream.seek(first.begin + 5)
        byte = stream.read(1)
        stream.seek(first.begin + 5)
        stream.write(bytes([byte[0] ^ 0xFF]))
    # Not detected at open (sizes hold; no data is read), by design: no decode happens...
    dataset = _ensure(cache_dir, decode_log, "open")
    assert decode_count(decode_log, "open") == 0
    served, _ = dataset[header.start]
    expected, _ = reference_sample(make_items()[header.start])
    assert not torch.equal(served.view(torch.uint8), expected.view(torch.uint8))
    dataset.close()
    # ...but the shard's checksum, which `shardcache verify` compares, no longer matches.
    entry = next(s for s in Manifest.read(built / MANIFEST_NAME).shards if s.file == shard.name)
    assert file_digest(shard) != entry.xxh3_128
    assert SHARD_NAME.match(shard.name)[3] == entry.xxh3_128  # type: ignore[index]


def test_a_damaged_shard_header_fails_the_first_read_naming_the_file(
    built: Path, decode_log: Path, cache_dir: Path
) -> None:
    shard = _shard(built, 1)
    data = shard.read_bytes()
    assert b'"data_offsets"' in data
    shard.write_bytes(data.replace(b'"data_offsets"', b'"data_offsetz"', 1))  # same size
    dataset = _ensure(cache_dir, decode_log, "open")
    first_sample = int(shard.name.split("-")[1])
    assert dataset[0][0].numel() > 0  # other shards serve: headers are parsed per shard
    with pytest.raises(CorruptCacheError, match=f"^{shard}: tensor .* malformed entry"):
        dataset[first_sample]  # the first read of that shard parses and checks its header
    assert decode_count(decode_log, "open") == 0


def test_a_damaged_sample_record_fails_that_samples_read_and_verify(
    built: Path, decode_log: Path, cache_dir: Path
) -> None:
    """Records are checked on each sample's first read (so a first batch checks only what
    it serves), and all at once by ``verify``."""
    shard = _shard(built, 1)
    start, stop = (int(field) for field in shard.name.split("-")[1:3])
    assert stop - start >= 2
    damaged = start + 1
    data = shard.read_bytes()
    record = f'img/{damaged:04d}.png\\"}}],[\\"mask\\",{{\\"tensor\\":1}}'.encode()
    assert data.count(record) == 1
    shard.write_bytes(data.replace(record, record.replace(b":1}", b":7}")))  # same size
    dataset = _ensure(cache_dir, decode_log, "open")
    assert sample_differences(reference_sample(make_items()[start]), dataset[start]) == []
    with pytest.raises(CorruptCacheError, match=rf"^{shard}: sample {damaged} has a malformed"):
        dataset[damaged]
    dataset.close()
    _, problems = verify_cache(dataset.path)
    assert [(problem.file, problem.problem) for problem in problems] == [
        (shard, f"sample {damaged} has a malformed record: tensor position 7 is out of range")
    ]
    assert decode_count(decode_log, "open") == 0


@pytest.mark.slow
def test_datamodule_rebuilds_a_damaged_cache(
    decode_log: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from shardcache import CachingDataModule

    items = make_items(12)
    split = {"train": items, "test": items[:4]}

    def module(tag: str) -> CachingDataModule:
        loader = SizedLoader(decode_log, small=4096, large=4096, tag=tag)
        return CachingDataModule(split, loader, cache="disk", cache_dir=cache_dir, shard_bytes=8192)

    module("build").prepare_data()
    train = next(p for p in published(cache_dir) if p.name.startswith("train-"))
    _truncate_shard(train)
    caplog.set_level(logging.WARNING, logger="shardcache")
    datamodule = module("rebuild")
    datamodule.prepare_data()
    assert decode_count(decode_log, "rebuild") == len(items)  # train only; test was intact
    assert any(f"cache {train.name} is damaged" in r.message for r in caplog.records)
    datamodule.setup("fit")
    for item, (tensor, metadata) in zip(
        items, datamodule.unshuffled_train_dataloader(), strict=True
    ):
        expected, _ = sized_sample(item, 4096, 4096, 0)
        assert torch.equal(tensor[0].view(torch.uint8), expected.view(torch.uint8))
        assert int(metadata["label"]) == item[1]
    datamodule.teardown("fit")


# ---- staging shards of an interrupted build ---------------------------------------------


def _valid_json_wrong_types(staging: Path) -> str:
    """A genuine safetensors file whose header is valid JSON of the wrong shape."""
    record = json.dumps({"format_version": 1, "start": 0, "stop": 3, "samples": 5})
    header = json.dumps({"__metadata__": {"shardcache": record}}).encode()
    header += b" " * (-(8 + len(header)) % 8)
    data = struct.pack("<Q", len(header)) + header
    name = shard_name(0, 3, xxhash.xxh3_128(data).hexdigest())
    (staging / name).write_bytes(data)
    return name


def test_damaged_staging_shards_are_decoded_again(
    tmp_path: Path, decode_log: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A build dies after writing most shards (the loader exits at its 36th decode).
    spec = child_spec(tmp_path, "crash", crash_at_decode=36, delay=0.01)
    assert fork_child(child_build, spec).wait() == CRASH_EXIT
    [staging] = (cache_dir / ".staging").iterdir()
    shards = sorted(staging.glob("shard-*"), key=lambda p: p.name)
    assert len(shards) >= 8, "the build should have left several shards to resume from"

    def samples(path: Path) -> range:
        match = SHARD_NAME.match(path.name)
        return range(int(match[1]), int(match[2]))  # type: ignore[index]

    # 0: a flipped byte in tensor data (the checksum catches it).
    data = bytearray(shards[0].read_bytes())
    data[-3] ^= 0x01
    shards[0].write_bytes(bytes(data))
    # 1: truncated. 2: garbage under a valid name.
    shards[1].write_bytes(shards[1].read_bytes()[:-50])
    shards[2].write_bytes(b"\x00" * shards[2].stat().st_size)
    # 3: a valid shard renamed to claim other samples.
    start, stop = samples(shards[3]).start, samples(shards[3]).stop
    digest = SHARD_NAME.match(shards[3].name)[3]  # type: ignore[index]
    shards[3].rename(staging / shard_name(start + 1, stop + 1, digest))
    # 4: a valid-JSON header of the wrong shape, checksum in its name right.
    fake = _valid_json_wrong_types(staging)
    # 5: a partial temporary file of a dead writer.
    (staging / f".tmp-1-abcd-{shards[5].name}").write_bytes(shards[5].read_bytes()[:100])
    intact = sum(len(samples(shard)) for shard in shards[4:])

    caplog.set_level(logging.WARNING, logger="shardcache")
    dataset = _ensure(cache_dir, decode_log, "resume")
    assert dataset_digest(dataset) == REFERENCE
    # Everything not in an intact staged shard is decoded, once.
    resumed = decode_count(decode_log, "resume")
    assert resumed == N_ITEMS - intact, (resumed, N_ITEMS, intact)
    warnings = [r.message for r in caplog.records if "not resuming from a damaged" in r.message]
    named = {name for name in (s.name for s in shards[:3]) if any(name in w for w in warnings)}
    assert named == {s.name for s in shards[:3]}
    assert any(fake in w and "malformed" in w for w in warnings)
    assert any("range does not match its name" in w for w in warnings)
    assert leftovers(cache_dir) == []


@pytest.mark.slow
def test_resume_with_another_shard_size_and_overlapping_shards(
    tmp_path: Path, decode_log: Path, cache_dir: Path
) -> None:
    spec = child_spec(tmp_path, "crash", crash_at_decode=30, delay=0.01)
    assert fork_child(child_build, spec).wait() == CRASH_EXIT
    [staging] = (cache_dir / ".staging").iterdir()
    shards = sorted(staging.glob("shard-*"), key=lambda p: p.name)
    # A copy of shard 1 whose name claims to start one sample earlier overlaps shard 0.
    spare = staging / "spare"
    shutil.copy(shards[1], spare)
    match = SHARD_NAME.match(shards[1].name)
    staged = staged_samples(cache_dir)
    spare.rename(staging / shard_name(int(match[1]) - 1, int(match[2]), match[3]))  # type: ignore[index]
    loader = SlowLoader(decode_log, tag="resume")
    dataset = ensure_cache(cache_dir, "train", make_items(), loader, shard_bytes=8192)
    assert dataset_digest(dataset) == REFERENCE
    assert decode_count(decode_log, "resume") == N_ITEMS - staged
