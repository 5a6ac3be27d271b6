"""Full and read-only filesystems, for real: size-limited and read-only tmpfs, bind mounts.

A build that cannot fit is refused before it decodes much, with the numbers; one that fills
the disk anyway fails with `InsufficientSpaceError` naming the directory and publishes
nothing, and builds once the filesystem has grown. A read-only cache directory serves its
published caches, and says which path is at fault when it has none or a damaged one.
Needs root to mount (skipped otherwise); every mount is undone in a ``finally``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardcache.errors import CacheDirError, InsufficientSpaceError
from shardcache.store import ensure_cache
from support.builds import (
    SHARD_BYTES,
    child_build,
    child_spec,
    leftovers,
    published,
    staged_samples,
)
from support.decodes import decode_count
from support.loaders import SizedLoader, SlowLoader, make_items, reference_digest, sized_sample
from support.mounts import readonly_bind, remount, tmpfs
from support.processes import fork_child, wait_for
from support.samples import dataset_digest

KiB, MiB = 1 << 10, 1 << 20


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs."""
    with tmpfs(tmp_path / "fs", "8m") as path:
        yield path


def _fill(filler: Path) -> None:
    """Write ``filler`` until the filesystem has not one byte left."""
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for chunk in (1 * MiB, 64 * KiB, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
        with pytest.raises(OSError) as caught:
            os.write(fd, b"\0")
        assert caught.value.errno == errno.ENOSPC
    finally:
        os.close(fd)


def _sized_reference(items: list, small: int, large: int, switch_at: int) -> str:
    return reference_digest(items, lambda item: sized_sample(item, small, large, switch_at))


def test_free_space_check_refuses_early_with_the_numbers(small_fs: Path, decode_log: Path) -> None:
    items = make_items(64)  # 64 x 256 KiB: about 16 MiB, on 8 MiB
    loader = SizedLoader(decode_log, small=256 * KiB, large=256 * KiB)
    cache_dir = small_fs / "cache"
    with pytest.raises(InsufficientSpaceError) as caught:
        ensure_cache(cache_dir, "train", items, loader, shard_bytes=1 * MiB)
    message = str(caught.value)
    assert re.search(
        rf"not enough free space to build the cache in {re.escape(str(cache_dir))}: needs "
        r"about 16\.8 MiB \(64 samples of about 256\.\d KiB\), [\d.]+ [KM]iB free",
        message,
    ), message
    assert isinstance(caught.value, OSError)
    # Refused after the 16 samples of the estimate, not after decoding everything.
    assert decode_count(decode_log) == 16
    assert published(cache_dir) == []
    assert leftovers(cache_dir) == []


@pytest.mark.slow
def test_disk_full_mid_write_then_the_filesystem_grows(small_fs: Path, decode_log: Path) -> None:
    # 16 small samples fool the estimate; the 24 large ones need 24 MiB of 8.
    items = make_items(40)
    sizes = {"small": 1 * KiB, "large": 1 * MiB, "switch_at": 16}
    loader = SizedLoader(decode_log, tag="full", **sizes)
    cache_dir = small_fs / "cache"
    with pytest.raises(InsufficientSpaceError) as caught:
        ensure_cache(cache_dir, "train", items, loader, shard_bytes=2 * MiB)
    error = caught.value
    assert error.errno == errno.ENOSPC
    assert re.search(
        rf"no space left on device while writing samples \[\d+, \d+\) to "
        rf"{re.escape(str(cache_dir))}/\.staging/[0-9a-f]{{64}}: [\d.]+ [KM]?i?B free",
        str(error),
    ), str(error)
    assert published(cache_dir) == []
    assert leftovers(cache_dir) == [], "a partial temporary shard was left"
    staged = staged_samples(cache_dir)
    assert 16 <= staged < 40

    remount(small_fs, "size=64m")
    again = SizedLoader(decode_log, tag="grown", **sizes)
    dataset = ensure_cache(cache_dir, "train", items, again, shard_bytes=2 * MiB)
    assert dataset_digest(dataset) == _sized_reference(items, **sizes)
    assert decode_count(decode_log, "grown") == 40 - staged  # resumed
    dataset.close()
    later = SizedLoader(decode_log, tag="later", **sizes)
    ensure_cache(cache_dir, "train", items, later, shard_bytes=2 * MiB)
    assert decode_count(decode_log, "later") == 0


@pytest.mark.slow
@pytest.mark.parametrize("file_name", ["items.json", "manifest.json"])
def test_disk_full_while_writing_the_manifest(
    small_fs: Path, tmp_path: Path, decode_log: Path, file_name: str
) -> None:
    """Every shard fits; then the disk fills up just before items.json or the manifest."""
    paused, resume = tmp_path / "paused", tmp_path / "resume"
    pause = {
        "event": "open",
        "pattern": r"^\.tmp-[^/ ]*" + re.escape(file_name) + " ",
        "nth": 1,
        "paused": str(paused),
        "resume": str(resume),
    }
    spec = child_spec(tmp_path, "full", cache_dir=str(small_fs / "cache"), pause=pause)
    child = fork_child(child_build, spec)
    wait_for(paused)
    filler = small_fs / "filler"
    _fill(filler)
    resume.touch()
    assert child.wait() == 0
    result = child.result()
    assert result["error"] == "InsufficientSpaceError", result
    assert re.search(
        rf"no space left on device while writing {re.escape(file_name)} to "
        r"\S+/\.staging/[0-9a-f]{64}",
        result["message"],
    ), result["message"]
    assert published(small_fs / "cache") == []
    assert leftovers(small_fs / "cache") == []
    filler.unlink()
    loader = SlowLoader(decode_log, tag="after")
    dataset = ensure_cache(small_fs / "cache", "train", make_items(), loader)
    assert dataset_digest(dataset) == reference_digest(make_items())
    assert decode_count(decode_log, "after") == 0  # every shard was kept


# ---- read-only cache directories ----------------------------------------------------------


def _build(cache_dir: Path, count_file: Path) -> str:
    loader = SlowLoader(count_file, tag="build")
    dataset = ensure_cache(cache_dir, "train", make_items(), loader, shard_bytes=SHARD_BYTES)
    dataset.close()
    return reference_digest(make_items())


def test_read_only_tmpfs_serves_its_published_cache(small_fs: Path, decode_log: Path) -> None:
    reference = _build(small_fs / "cache", decode_log)
    remount(small_fs, "ro")
    loader = SlowLoader(decode_log, tag="ro")
    dataset = ensure_cache(small_fs / "cache", "train", make_items(), loader)
    assert dataset_digest(dataset) == reference
    assert decode_count(decode_log, "ro") == 0
    dataset.close()


def test_read_only_bind_mount_serves_its_published_cache(tmp_path: Path, decode_log: Path) -> None:
    reference = _build(tmp_path / "rw" / "cache", decode_log)
    with readonly_bind(tmp_path / "rw", tmp_path / "ro") as mounted:
        loader = SlowLoader(decode_log, tag="ro")
        dataset = ensure_cache(mounted / "cache", "train", make_items(), loader)
        assert dataset_digest(dataset) == reference
        assert decode_count(decode_log, "ro") == 0
        dataset.close()
        del dataset  # its mappings must not keep the mount busy


def test_empty_read_only_directory_names_the_path(small_fs: Path, decode_log: Path) -> None:
    (small_fs / "cache").mkdir()
    remount(small_fs, "ro")
    loader = SlowLoader(decode_log)
    with pytest.raises(CacheDirError, match=re.escape(f"cache directory {small_fs / 'cache'} ")):
        ensure_cache(small_fs / "cache", "train", make_items(), loader)
    with pytest.raises(CacheDirError, match=re.escape(str(small_fs / "cache" / "sub"))):
        ensure_cache(small_fs / "cache" / "sub", "train", make_items(), loader)
    assert decode_count(decode_log) == 0


def test_damaged_cache_on_a_read_only_directory_names_the_file(
    small_fs: Path, decode_log: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _build(small_fs / "cache", decode_log)
    [path] = published(small_fs / "cache")
    shard = sorted(path.glob("shard-*"))[2]
    with shard.open("r+b") as stream:
        stream.truncate(shard.stat().st_size - 1)
    remount(small_fs, "ro")
    caplog.set_level(logging.WARNING, logger="shardcache")
    loader = SlowLoader(decode_log, tag="ro")
    with pytest.raises(CacheDirError) as caught:
        ensure_cache(small_fs / "cache", "train", make_items(), loader)
    assert f"{shard}: shard is " in str(caught.value)
    assert "cannot be rebuilt" in str(caught.value)
    assert decode_count(decode_log, "ro") == 0


def test_cache_dir_under_a_regular_file_names_the_path(tmp_path: Path, decode_log: Path) -> None:
    regular = tmp_path / "file"
    regular.write_text("not a directory")
    loader = SlowLoader(decode_log)
    for cache_dir in (regular, regular / "cache"):
        with pytest.raises(CacheDirError, match=re.escape(f"cache directory {cache_dir} ")):
            ensure_cache(cache_dir, "train", make_items(), loader)
    assert decode_count(decode_log) == 0
    shutil.rmtree(tmp_path / "file", ignore_errors=True)
