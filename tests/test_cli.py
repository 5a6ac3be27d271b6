from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import pty
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from shardcache.cli import main, parse_duration, parse_size
from shardcache.core.units import format_size
from shardcache.store import CacheDataset, CacheRoot, ensure_cache
from shardcache.store.format import Manifest
from shardcache.store.header import file_digest
from shardcache.store.layout import LAST_USED_NAME
from shardcache.store.leases import Lease, lease_held
from shardcache.store.locking import BuildLock
from shardcache.tiers.none import RawDataset
from support.loaders import TinyLoader
from support.processes import DEADLINE, subprocess_env, wait_for
from support.samples import dataset_digest

BIN = Path(sys.executable).parent
TRAIN = range(40)  # 5 shards of 8 samples
VALIDATION = range(100, 110)  # 2 shards

SHARD_BYTES = 2048
"""With 64 float32 per sample (256 bytes): 8 samples per shard."""

ENTRY_KEYS = {
    "name",
    "path",
    "state",
    "key",
    "subset",
    "samples",
    "bytes",
    "created",
    "last_used",
    "in_use",
    "problem",
    "owner",
}


def build(cache_dir: Path, subset: str, items: Sequence[int]) -> Path:
    """Build (or open) the cache of ``items`` and close it again; its directory."""
    dataset = ensure_cache(cache_dir, subset, list(items), TinyLoader(), shard_bytes=SHARD_BYTES)
    dataset.close()
    return dataset.path


def expected_digest(items: Sequence[int]) -> str:
    """The `dataset_digest` a correct cache of ``items`` gives."""
    return dataset_digest(RawDataset("expected", list(items), TinyLoader()))


READER = """
import sys
from pathlib import Path

from shardcache.store import CacheDataset
from support.processes import wait_for
from support.samples import dataset_digest

cache, ready, go, result = sys.argv[1:5]
dataset = CacheDataset(cache)
dataset[0]  # maps every shard
Path(ready).touch()
wait_for(Path(go))
Path(result).write_text(dataset_digest(dataset))
"""


def start_reader(cache: Path, workdir: Path, **env: str) -> subprocess.Popen[bytes]:
    """Start a process that reads ``cache``; return once it has read one sample.

    It creates ``workdir/ready``, waits for ``workdir/go``, then reads every sample and
    writes their digest to ``workdir/result``.
    """
    paths = [str(workdir / name) for name in ("ready", "go", "result")]
    process = subprocess.Popen(
        [sys.executable, "-c", READER, str(cache), *paths],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=subprocess_env(**env),
    )
    wait_for(workdir / "ready", process)
    return process


def finish_reader(process: subprocess.Popen[bytes], workdir: Path) -> str:
    """Let the reader read everything; the digest it computed."""
    (workdir / "go").touch()
    _, err = process.communicate(timeout=DEADLINE)
    assert process.returncode == 0, err.decode()
    return (workdir / "result").read_text()


@pytest.fixture(autouse=True)
def default_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """fcntl locks (leases) and mmap, whatever the environment says (subprocesses inherit)."""
    monkeypatch.delenv("SHARDCACHE_LOCK", raising=False)
    monkeypatch.delenv("SHARDCACHE_MMAP", raising=False)
    monkeypatch.delenv("SHARDCACHE_DIR", raising=False)


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch):
    """Local time is UTC, so that printed times are known."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def caches(cache_dir: Path) -> tuple[Path, Path, Path]:
    """A cache directory with a train (40 samples) and a validation (10) cache."""
    return cache_dir, build(cache_dir, "train", TRAIN), build(cache_dir, "validation", VALIDATION)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], str]:
    """Exit status, stdout lines and stderr of ``shardcache argv``."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def set_last_used(path: Path, moment: datetime) -> None:
    marker = path / LAST_USED_NAME
    marker.touch()
    os.utime(marker, (moment.timestamp(), moment.timestamp()))


def size_of(path: Path) -> int:
    return sum(file.stat().st_size for file in path.iterdir() if file.is_file())


def add_staging(root: Path) -> tuple[Path, Path]:
    """Two staging directories: ``a...`` (100 bytes) that no one builds, ``b...`` (empty)."""
    stale = root / ".staging" / ("a" * 64)
    stale.mkdir(parents=True)
    (stale / "partial").write_bytes(b"x" * 100)
    building = root / ".staging" / ("b" * 64)
    building.mkdir()
    return stale, building


def shard(path: Path, position: int) -> Path:
    return sorted(path.glob("shard-*.safetensors"))[position]


# --- sizes and durations --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (5 * 2**20, "5.0 MiB"),
        (int(2.25 * 2**30), "2.2 GiB"),
        (3 * 2**40, "3.0 TiB"),
    ],
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4096", 4096),
        ("10G", 10 * 2**30),
        ("500MiB", 500 * 2**20),
        ("1.5GiB", int(1.5 * 2**30)),
        ("2GB", 2 * 10**9),
        ("64k", 64 * 1024),
        ("7 KB", 7000),
        ("12B", 12),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("7d", 7 * 86400),
        ("12h", 12 * 3600),
        ("1d12h", 36 * 3600),
        ("30m", 1800),
        ("2w", 14 * 86400),
    ],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "argv",
    [
        ["prune", "--max-size", "10X"],
        ["prune", "--older-than", "7"],
        ["prune", "--older-than", "7d3"],
        ["prune"],
        ["clear"],
        ["clear", "--all", "train"],
        ["info"],
        ["frobnicate"],
        [],
    ],
)
def test_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str]
) -> None:
    code, out, err = run(capsys, *argv, *(["--cache-dir", str(tmp_path)] if argv else []))
    assert code == 2
    assert "error" in err
    assert out == []


def test_help_documents_exit_status_and_why_verify_cannot_rebuild(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "  0  success" in out
    assert "  2  usage error: a bad option or an unknown cache name" in out
    code, out, _ = run(capsys, "verify", "--help")
    text = "\n".join(out)
    assert code == 0
    assert "cannot be re-created from its manifest" in text
    assert "  1  problems found: a damaged cache, a cache that could not be removed," in out


# --- list -----------------------------------------------------------------------------------


def test_list_empty_and_missing_directories(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere"
    assert run(capsys, "list", "--cache-dir", str(missing)) == (
        0,
        [f"no caches in {missing} (the directory does not exist)"],
        "",
    )
    assert run(capsys, "list", "--cache-dir", str(tmp_path)) == (
        0,
        [f"no caches in {tmp_path}"],
        "",
    )
    assert run_json(capsys, "list", "--cache-dir", str(tmp_path)) == (
        0,
        {"cache_dir": str(tmp_path), "caches": [], "total_bytes": 0},
    )


def test_list_shows_every_cache(
    capsys: pytest.CaptureFixture[str], caches: tuple[Path, Path, Path], utc: None
) -> None:
    root, train, validation = caches
    set_last_used(train, datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
    set_last_used(validation, datetime(2025, 2, 3, 4, 5, 6, tzinfo=timezone.utc))
    created = {
        path: Manifest.read(path / "manifest.json").created[:16].replace("T", " ")
        for path in (train, validation)
    }
    sizes = {path: format_size(size_of(path)) for path in (train, validation)}
    name_width = len(validation.name)
    size_width = max(len(size) for size in sizes.values())
    code, out, err = run(capsys, "list", "--cache-dir", str(root))
    assert (code, err) == (0, "")
    assert out == [
        f"{'NAME':<{name_width}}  SAMPLES  {'SIZE':>{size_width}}  STATE      "
        "CREATED           LAST USED",
        f"{train.name:<{name_width}}       40  {sizes[train]:>{size_width}}  published  "
        f"{created[train]}  2025-01-02 03:04",
        f"{validation.name:<{name_width}}       10  {sizes[validation]:>{size_width}}  published  "
        f"{created[validation]}  2025-02-03 04:05",
        f"2 caches, {format_size(size_of(train) + size_of(validation))} in {root}",
    ]


def test_list_json_schema(
    capsys: pytest.CaptureFixture[str], caches: tuple[Path, Path, Path]
) -> None:
    root, train, validation = caches
    moment = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    set_last_used(train, moment)
    code, document = run_json(capsys, "list", "--cache-dir", str(root))
    assert code == 0
    assert set(document) == {"cache_dir", "caches", "total_bytes"}
    assert document["total_bytes"] == size_of(train) + size_of(validation)
    first, second = document["caches"]
    assert set(first) == ENTRY_KEYS
    manifest = Manifest.read(train / "manifest.json")
    assert first == {
        "name": train.name,
        "path": str(train),
        "state": "published",
        "key": manifest.key,
        "subset": "train",
        "samples": 40,
        "bytes": size_of(train),
        "created": manifest.created,
        "last_used": "2025-01-02T03:04:05+00:00",
        "in_use": False,
        "problem": None,
        "owner": None,
    }
    assert (second["name"], second["samples"]) == (validation.name, 10)


def test_list_states(
    capsys: pytest.CaptureFixture[str], caches: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    root, train, validation = caches
    add_staging(root)
    shard(validation, 1).unlink()
    dataset = CacheDataset(train)  # a live reader: this process holds the lease
    with BuildLock(CacheRoot(root).lock("b" * 64), "test-" + "b" * 24, timeout=1) as lock:
        lock.report_progress(3, 10)
        code, out, _ = run(capsys, "list", "--cache-dir", str(root))
        code_json, document = run_json(capsys, "list", "--cache-dir", str(root))
    dataset.close()
    assert code == code_json == 0
    states = {line.split()[0]: line.split("  ") for line in out[1:-1]}
    rows = {
        name: [cell.strip() for cell in cells if cell.strip()] for name, cells in states.items()
    }
    assert rows["a" * 24][1:4] == ["-", "100 B", "stale staging"]
    assert rows["test-" + "b" * 24][1:4] == ["3/10", "0 B", "building"]
    assert rows[train.name][1:4] == ["40", format_size(size_of(train)), "published, in use"]
    assert rows[validation.name][3] == "damaged"
    by_name = {entry["name"]: entry for entry in document["caches"]}
    assert by_name["a" * 24]["state"] == "stale_staging"
    assert by_name["test-" + "b" * 24]["state"] == "building"
    assert by_name["test-" + "b" * 24]["owner"]["pid"] == os.getpid()
    assert by_name[train.name]["in_use"] is True
    assert by_name[validation.name]["state"] == "damaged"
    assert (
        by_name[validation.name]["problem"] == f"{shard_name_of(validation, 1)}: shard is missing"
    )
    assert out[-1] == f"4 caches, {format_size(document['total_bytes'])} in {root}"


def shard_name_of(path: Path, position: int) -> str:
    return Manifest.read(path / "manifest.json").shards[position].file


# --- info -----------------------------------------------------------------------------------


def test_info(
    capsys: pytest.CaptureFixture[str], caches: tuple[Path, Path, Path], utc: None
) -> None:
    root, train, _ = caches
    set_last_used(train, datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
    manifest = Manifest.read(train / "manifest.json")
    code, out, _ = run(capsys, "info", "train", "--cache-dir", str(root))
    assert code == 0
    created = manifest.created[:16].replace("T", " ")
    tensor_bytes = format_size(40 * 64 * 4)
    assert out[:11] == [
        train.name,
        f"  path:      {train}",
        "  state:     published",
        f"  key:       {manifest.key}",
        "  subset:    train",
        "  samples:   40",
        f"  size:      {format_size(size_of(train))} in 5 shards",
        f"  storage:   {tensor_bytes} of tensors, stored as served",
        "  labels:    0: 14, 1: 13, 2: 13",
        f"  created:   {created} by shardcache {manifest.library_version} (format 2)",
        "  last used: 2025-01-02 03:04",
    ]
    assert out[11] == "key inputs:"
    inputs = {line.split(":")[0].strip(): line.split(":", 1)[1].strip() for line in out[12:18]}
    assert inputs == {
        "format_version": "2",
        "items_sha256": manifest.key_inputs["items_sha256"],
        "loader.attributes.width": "64",
        "loader.class": "support.loaders.TinyLoader",
        "loader.source_sha256": manifest.key_inputs["loader"]["source_sha256"],
        "num_items": "40",
    }
    assert out[18] == "shards:"
    first = manifest.shards[0]
    assert out[19] == f"  {first.file}  samples 0-7    {format_size(first.bytes)}"
    assert len(out) == 19 + 5


def test_info_json(capsys: pytest.CaptureFixture[str], caches: tuple[Path, Path, Path]) -> None:
    root, _, validation = caches
    manifest = Manifest.read(validation / "manifest.json")
    code, document = run_json(capsys, "info", validation.name, "--cache-dir", str(root))
    assert code == 0
    assert set(document) == ENTRY_KEYS | {
        "library_version",
        "format_version",
        "key_inputs",
        "storage",
        "shard_options",
        "label_counts",
        "shards",
    }
    assert document["key_inputs"] == manifest.key_inputs
    assert document["label_counts"] == [
        {"label": 0, "count": 3},
        {"label": 1, "count": 4},
        {"label": 2, "count": 3},
    ]
    assert [shard["file"] for shard in document["shards"]] == [s.file for s in manifest.shards]
    assert set(document["shards"][0]) == {"file", "start", "stop", "bytes", "xxh3_128"}


def test_names_by_prefix_of_name_or_key_unknown_and_ambiguous(
    capsys: pytest.CaptureFixture[str], caches: tuple[Path, Path, Path]
) -> None:
    root, train, validation = caches
    key = Manifest.read(validation / "manifest.json").key
    assert run(capsys, "info", key[:8], "--cache-dir", str(root))[1][0] == validation.name
    assert run(capsys, "info", "val", "--cache-dir", str(root))[1][0] == validation.name
    code, out, err = run(capsys, "info", "test", "--cache-dir", str(root))
    assert (code, out) == (2, [])
    assert err == "shardcache info: error: no cache named 'test' (see `shardcache list`)\n"
    build(root, "train2", range(3))
    code, out, err = run(capsys, "info", "train", "--cache-dir", str(root))
    assert (code, out) == (2, [])
    assert "'train' is ambiguous: it matches train-" in err
    assert run(capsys, "info", train.name, "--cache-dir", str(root))[0] == 0


# --- verify ---------------------------------------------------------------------------------


def test_verify_healthy(
    capsys: pytest.CaptureFixture[str], caches: tuple[Path, Path, Path]
) -> None:
    root, train, validation = caches
    code, out, _ = run(capsys, "verify", "--cache-dir", str(root))
    assert code == 0
    assert out == [
        f"ok       {train.name} (40 samples, 5 shards, {format_size(size_of(train))})",
        f"ok       {validation.name} (10 samples, 2 shards, {format_size(size_of(validation))})",
        "2 caches verified, all intact",
    ]
    assert run_json(capsys, "verify", "train", "--cache-dir", str(root)) == (
        0,
        {
            "cache_dir": str(root),
            "caches": [
                {
                    "name": train.name,
                    "path": str(train),
                    "ok": True,
                    "problems": [],
                    "removed": False,
                    "not_removed_reason": None,
                }
            ],
            "ok": True,
        },
    )


def _truncate(path: Path) -> str:
    size = path.stat().st_size
    os.truncate(path, size - 10)
    return f"shard is {size - 10} bytes, the manifest says {size}"


def _flip_bit(path: Path) -> str:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # in the last sample's tensor data: the header still parses
    path.write_bytes(bytes(data))
    digest = path.name.split("-")[-1].split(".")[0]
    return (
        f"checksum mismatch: the file's xxh3-128 is {file_digest(path)}, the manifest says {digest}"
    )


def _delete(path: Path) -> str:
    path.unlink()
    return "shard is missing"


@pytest.mark.parametrize(
    "damage", [_truncate, _flip_bit, _delete], ids=["truncated", "flipped", "deleted"]
)
def test_verify_names_the_damaged_file(
    capsys: pytest.CaptureFixture[str], caches: tuple[Path, Path, Path], damage
) -> None:
    root, train, validation = caches
    bad = shard(train, 2)
    problem = damage(bad)
    code, out, _ = run(capsys, "verify", "--cache-dir", str(root))
    assert code == 1
    assert out == [
        f"DAMAGED  {train.name}",
        f"  {bad.name}: {problem}",
        f"ok       {validation.name} (10 samples, 2 shards, {format_size(size_of(validation))})",
        "2 caches verified, 1 damaged; `shardcache verify --repair` removes damaged caches, "
        "and the next run that uses one rebuilds it",
    ]
    code, document = run_json(capsys, "verify", train.name, "--cache-dir", str(root))
    assert code == 1
    assert document["ok"] is False
    assert document["caches"][0]["problems"] == [{"file": str(bad), "problem": problem}]
    assert train.exists()  # verify alone removes nothing


def test_verify_a_broken_manifest_and_several_files(
    capsys: pytest.CaptureFixture[str], caches: tuple[Path, Path, Path]
) -> None:
    root, train, validation = caches
    (validation / "manifest.json").write_text("{not json")
    first, last = shard(train, 0), shard(train, 4)
    _delete(first)
    truncated = _truncate(last)
    code, out, _ = run(capsys, "verify", "--cache-dir", str(root))
    assert code == 1
    assert out[:4] == [
        f"DAMAGED  {train.name}",
        f"  {first.name}: shard is missing",
        f"  {last.name}: {truncated}",
        f"DAMAGED  {validation.name}",
    ]
    assert out[4].startswith("  manifest.json: manifest is not valid JSON")
    assert out[5].startswith("2 caches verified, 2 damaged;")


def test_verify_repair_removes_the_damaged_cache_and_a_run_rebuilds_it(
    capsys: pytest.CaptureFixture[str], caches: tuple[Path, Path, Path]
) -> None:
    root, train, validation = caches
    bad = shard(train, 1)
    _flip_bit(bad)
    code, out, _ = run(capsys, "verify", "--repair", "--cache-dir", str(root))
    assert code == 1
    assert out[2] == "  removed: the next run that uses it rebuilds it"
    assert out[-1] == "2 caches verified, 1 damaged (1 removed)"
    assert not train.exists()
    assert validation.exists()
    assert list((root / ".trash").iterdir()) == []
    rebuilt = build(root, "train", TRAIN)
    assert rebuilt == train
    assert run(capsys, "verify", "--cache-dir", str(root))[0] == 0


# --- clear ----------------------------------------------------------------------------------


def test_clear_by_name(capsys: pytest.CaptureFixture[str], caches: tuple[Path, Path, Path]) -> None:
    root, train, validation = caches
    size = format_size(size_of(train))
    assert run(capsys, "clear", "train", "--yes", "--cache-dir", str(root)) == (
        0,
        [f"removed {train.name} ({size})", f"freed {size}"],
        "",
    )
    assert not train.exists()
    assert validation.exists()


def test_clear_all_skips_a_build_in_progress_and_removes_stale_staging(
    capsys: pytest.CaptureFixture[str], caches: tuple[Path, Path, Path]
) -> None:
    root, train, validation = caches
    stale, building = add_staging(root)
    leftover = root / ".trash" / "old-cache.1234"
    leftover.mkdir(parents=True)
    (leftover / "shard").write_bytes(b"y" * 50)
    sizes = {path: format_size(size_of(path)) for path in (train, validation)}
    total = size_of(train) + size_of(validation) + 100 + 50
    with BuildLock(CacheRoot(root).lock("b" * 64), "test-" + "b" * 24, timeout=1):
        code, out, _ = run(capsys, "clear", "--all", "--cache-dir", str(root))
    assert code == 1
    assert out[0] == f"removed {'a' * 24} (stale staging, 100 B)"
    assert out[1].startswith(
        f"skipped test-{'b' * 24}: a build is in progress (pid {os.getpid()} on host "
    )
    assert out[2:] == [
        f"removed {train.name} ({sizes[train]})",
        f"removed {validation.name} ({sizes[validation]})",
        "removed what interrupted removals left in .trash (50 B)",
        f"freed {format_size(total)}",
    ]
    assert not train.exists()
    assert not validation.exists()
    assert not stale.exists()
    assert building.exists()
    assert list((root / ".trash").iterdir()) == []


def test_clear_asks_on_a_terminal(
    capsys: pytest.CaptureFixture[str],
    caches: tuple[Path, Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root, train, _ = caches
    size = format_size(size_of(train))
    master, slave = pty.openpty()
    try:
        with open(slave, encoding="utf-8") as terminal:  # noqa: PTH123 (a descriptor, not a path)
            monkeypatch.setattr(sys, "stdin", terminal)
            question = (
                f"  {train.name} (published, {size})\nRemove 1 cache ({size}) from {root}? [y/N] "
            )
            os.write(master, b"n\n")
            assert run(capsys, "clear", "train", "--cache-dir", str(root)) == (
                1,
                [],
                question + "nothing removed\n",
            )
            assert train.exists()
            os.write(master, b"y\n")
            assert run(capsys, "clear", "train", "--cache-dir", str(root)) == (
                0,
                [f"removed {train.name} ({size})", f"freed {size}"],
                question,
            )
            assert not train.exists()
    finally:
        os.close(master)


@pytest.mark.slow
@pytest.mark.parametrize("mmap", ["1", "0"], ids=["mmap", "plain-reads"])
def test_clear_while_another_process_reads_the_cache(
    capsys: pytest.CaptureFixture[str], caches: tuple[Path, Path, Path], tmp_path: Path, mmap: str
) -> None:
    root, train, _ = caches
    size = format_size(size_of(train))
    reader = start_reader(train, tmp_path, SHARDCACHE_MMAP=mmap)
    try:
        code, out, _ = run(capsys, "clear", train.name, "--yes", "--cache-dir", str(root))
        assert not train.exists()
        assert list((root / ".trash").iterdir()) == []  # every file is unlinked already
        digest = finish_reader(reader, tmp_path)
    finally:
        reader.kill()
        reader.wait()
    assert (code, out) == (
        0,
        [
            f"removed {train.name} ({size}); a running process has it open and keeps reading it",
            f"freed {size}",
        ],
    )
    assert digest == expected_digest(TRAIN)


# --- prune ----------------------------------------------------------------------------------


@pytest.fixture
def aged(cache_dir: Path) -> tuple[Path, dict[str, Path]]:
    """Three caches whose names do not sort in the order of their use."""
    paths = {
        "zeta": build(cache_dir, "zeta", range(10, 18)),  # used 3 days ago
        "alpha": build(cache_dir, "alpha", range(20, 28)),  # 2 days ago
        "mid": build(cache_dir, "mid", range(30, 38)),  # an hour ago
    }
    return cache_dir, paths


def age(paths: dict[str, Path]) -> dict[str, datetime]:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    ages = {"zeta": timedelta(days=3), "alpha": timedelta(days=2), "mid": timedelta(hours=1)}
    moments = {name: now - ages[name] for name in paths}
    for name, path in paths.items():
        set_last_used(path, moments[name])
    return moments


def described(path: Path, moment: datetime) -> str:
    return f"{path.name} ({format_size(size_of(path))}, last used {moment:%Y-%m-%d %H:%M})"


def test_prune_older_than_removes_least_recently_used_first(
    capsys: pytest.CaptureFixture[str], aged: tuple[Path, dict[str, Path]], utc: None
) -> None:
    root, paths = aged
    moments = age(paths)
    expected = [f"removed {described(paths[n], moments[n])}" for n in ("zeta", "alpha")]
    freed = format_size(size_of(paths["zeta"]) + size_of(paths["alpha"]))
    left = format_size(size_of(paths["mid"]))
    code, out, _ = run(capsys, "prune", "--older-than", "36h", "--cache-dir", str(root))
    assert (code, out) == (0, [*expected, f"freed {freed}; 1 cache ({left}) remain"])
    assert [path.exists() for path in paths.values()] == [False, False, True]
    code, out, _ = run(capsys, "prune", "--older-than", "2h", "--cache-dir", str(root))
    assert (code, out) == (0, [f"nothing to prune; 1 cache ({left}) remain"])


def test_prune_max_size_lru_first_and_skips_a_cache_in_use(
    capsys: pytest.CaptureFixture[str], aged: tuple[Path, dict[str, Path]], utc: None
) -> None:
    root, paths = aged
    sizes = {name: size_of(path) for name, path in paths.items()}
    dataset = CacheDataset(paths["zeta"])  # this process has the oldest open
    moments = age(paths)  # after opening, which marks it used
    said = {name: described(path, moments[name]) for name, path in paths.items()}
    limit = sizes["zeta"] + sizes["mid"]  # alpha must go, as zeta cannot
    code, document = run_json(
        capsys, "prune", "--max-size", str(limit), "--dry-run", "--cache-dir", str(root)
    )
    assert (code, [entry["name"] for entry in document["removed"]]) == (0, [paths["alpha"].name])
    assert [(entry["name"], entry["reason"]) for entry in document["kept"]] == [
        (paths["zeta"].name, "in use by a running process")
    ]
    assert set(document) == {
        "cache_dir",
        "dry_run",
        "removed",
        "kept",
        "freed_bytes",
        "remaining_bytes",
        "max_size_reached",
    }
    assert (document["freed_bytes"], document["remaining_bytes"]) == (sizes["alpha"], limit)
    assert all(path.exists() for path in paths.values())
    code, out, _ = run(capsys, "prune", "--max-size", str(limit), "--cache-dir", str(root))
    assert (code, out) == (
        0,
        [
            f"kept {said['zeta']}: in use by a running process",
            f"removed {said['alpha']}",
            f"freed {format_size(sizes['alpha'])}; 2 caches ({format_size(limit)}) remain",
        ],
    )
    assert not paths["alpha"].exists()
    dataset.close()
    limit = sizes["mid"]
    code, out, _ = run(capsys, "prune", "--max-size", str(limit), "--cache-dir", str(root))
    assert (code, out) == (
        0,
        [
            f"removed {said['zeta']}",
            f"freed {format_size(sizes['zeta'])}; 1 cache ({format_size(sizes['mid'])}) remain",
        ],
    )
    assert [path.exists() for path in paths.values()] == [False, False, True]


@pytest.mark.slow
def test_prune_never_removes_a_cache_another_process_has_open(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, cache_dir: Path, utc: None
) -> None:
    root = cache_dir
    old, new = build(root, "old", range(8)), build(root, "new", range(100, 108))
    sizes = {path: format_size(size_of(path)) for path in (old, new)}
    reader = start_reader(old, tmp_path)
    try:
        now = datetime.now(timezone.utc)
        set_last_used(old, now - timedelta(days=2))
        set_last_used(new, now - timedelta(days=1))
        code, out, _ = run(capsys, "prune", "--max-size", "0", "--cache-dir", str(root))
        assert old.exists()
        assert not new.exists()
        digest = finish_reader(reader, tmp_path)
    finally:
        reader.kill()
        reader.wait()
    assert code == 1
    assert out[0].startswith(f"kept {old.name} ({sizes[old]}, last used ")
    assert out[0].endswith("): in use by a running process")
    assert out[1].startswith(f"removed {new.name} ({sizes[new]}, last used ")
    assert out[2:] == [
        f"freed {sizes[new]}; 1 cache ({sizes[old]}) remain",
        "still over --max-size 0 B: the rest is in use or being built",
    ]
    assert digest == expected_digest(range(8))
    # The reader has exited, and its lease with it.
    code, out, _ = run(capsys, "prune", "--max-size", "0", "--cache-dir", str(root))
    assert (code, out[-1]) == (0, f"freed {sizes[old]}; 0 caches (0 B) remain")
    assert not old.exists()


# --- leases ---------------------------------------------------------------------------------


def _hold(dataset: CacheDataset, started, stop) -> None:
    dataset[0]
    started.set()
    stop.wait(DEADLINE)


def test_lease_lives_from_open_to_close_and_is_never_pickled(
    caches: tuple[Path, Path, Path],
) -> None:
    root, train, _ = caches
    key = Manifest.read(train / "manifest.json").key
    assert lease_held(CacheRoot(root).lease(key)) is False
    dataset = CacheDataset(train)
    assert lease_held(CacheRoot(root).lease(key)) is True
    clone = pickle.loads(pickle.dumps(dataset))  # noqa: S301 (our own bytes)
    dataset.close()
    # The clone holds none: the opener's process does.
    assert lease_held(CacheRoot(root).lease(key)) is False
    assert clone[3][1] == {"label": 0, "name": "item-3"}
    lease = Lease.take(CacheRoot(root).lease(key))
    assert lease is not None
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(lease)
    lease.release()
    lease.release()
    assert lease_held(CacheRoot(root).lease(key)) is False


def test_a_forked_worker_keeps_the_lease_harmlessly(caches: tuple[Path, Path, Path]) -> None:
    root, train, _ = caches
    key = Manifest.read(train / "manifest.json").key
    context = multiprocessing.get_context("fork")
    started, stop = context.Event(), context.Event()
    dataset = CacheDataset(train)
    worker = context.Process(target=_hold, args=(dataset, started, stop))
    worker.start()
    try:
        assert started.wait(DEADLINE)
        dataset.close()
        held_by_worker = lease_held(CacheRoot(root).lease(key))
    finally:
        stop.set()
        worker.join(DEADLINE)
    assert (held_by_worker, worker.exitcode) == (True, 0)
    assert lease_held(CacheRoot(root).lease(key)) is False


def test_a_cache_opens_where_no_lease_can_be_taken(
    caches: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, train, _ = caches
    key = Manifest.read(train / "manifest.json").key
    locks = root / ".locks"
    for file in locks.iterdir():
        file.unlink()
    locks.rmdir()
    dataset = CacheDataset(train)  # as a cache copied out of its cache directory
    assert dataset[9][1] == {"label": 0, "name": "item-9"}
    assert not locks.exists()  # no stray directory beside it
    dataset.close()
    locks.write_text("not a directory")  # as on a cache directory nobody may write to
    dataset = CacheDataset(train)
    assert dataset[9][1] == {"label": 0, "name": "item-9"}
    assert lease_held(CacheRoot(root).lease(key)) is None
    dataset.close()
    monkeypatch.setenv("SHARDCACHE_LOCK", "soft")
    assert Lease.take(CacheRoot(root).lease(key)) is None


# --- the installed command ------------------------------------------------------------------


def test_options_before_or_after_the_subcommand(
    capsys: pytest.CaptureFixture[str], caches: tuple[Path, Path, Path]
) -> None:
    root, _, _ = caches
    after = run(capsys, "list", "--cache-dir", str(root), "--json")
    before = run(capsys, "--cache-dir", str(root), "--json", "list")
    assert after == before
    assert after[0] == 0
    assert json.loads("\n".join(after[1]))["cache_dir"] == str(root)


@pytest.mark.slow
def test_the_console_script_and_python_m(
    capsys: pytest.CaptureFixture[str], caches: tuple[Path, Path, Path]
) -> None:
    root, _, validation = caches
    expected = run(capsys, "list", "--cache-dir", str(root))
    script = subprocess.run(
        [str(BIN / "shardcache"), "list", "--cache-dir", str(root)],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert (script.returncode, script.stdout.splitlines(), script.stderr) == expected
    bad = shard(validation, 0)
    bad.unlink()
    module = subprocess.run(
        [sys.executable, "-m", "shardcache", "verify", "--json"],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        env={**os.environ, "SHARDCACHE_DIR": str(root)},
        check=False,
    )
    assert module.returncode == 1
    reports = json.loads(module.stdout)["caches"]
    assert [report["ok"] for report in reports] == [True, False]
    assert reports[1]["problems"] == [{"file": str(bad), "problem": "shard is missing"}]
    usage = subprocess.run(
        [str(BIN / "shardcache")], capture_output=True, text=True, timeout=DEADLINE, check=False
    )
    assert usage.returncode == 2
    assert usage.stderr.startswith("usage: shardcache")
