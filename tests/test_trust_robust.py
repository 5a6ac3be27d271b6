"""Issue 11, "never hang, never crash on the neighbours": findings 10, 11, 12 and 13.

FIFOs are real (``os.mkfifo``). A `FifoWatchdog` unblocks whatever is stuck opening one
after a grace period, so that 10340c7 fails these tests instead of hanging them; the
``timeout`` marks are a second line of defence.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shardcache import BadSamplesError, CorruptCacheError
from shardcache.cli import main
from shardcache.store import ensure_cache
from support.trust import (
    FifoWatchdog,
    FlakyLoader,
    TinyLoader,
    outcome,
    replace_with_fifo,
    tiny_sample_id,
)

GRACE = 2.0
"""Seconds an operation on a tiny cache may take before it counts as blocked."""


def build(cache_dir: Path, items: list[int], subset: str = "train", **options: object) -> Path:
    dataset = ensure_cache(cache_dir, subset, items, TinyLoader(), **options)  # type: ignore[arg-type]
    dataset[0]
    dataset.close()
    return dataset.path


def served_ids(cache_dir: Path, items: list[int], subset: str = "train") -> list[int]:
    """Open (or build) the cache of ``items`` and read every sample's item back."""
    dataset = ensure_cache(cache_dir, subset, items, TinyLoader())
    try:
        return [tiny_sample_id(dataset[index][0]) for index in range(len(dataset))]
    finally:
        dataset.close()


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out + err


# ---- finding 10: a FIFO where a file is expected ---------------------------------------------


@pytest.fixture
def lease_fifos(tmp_path: Path) -> tuple[Path, list[Path]]:
    """A built cache whose lease files (``.locks/<key>.lease``) are FIFOs."""
    cache = tmp_path / "cache"
    build(cache, list(range(8)))
    leases = sorted(cache.rglob("*.lease"))
    assert leases, "no lease file after a read: the layout changed, update this fixture"
    for lease in leases:
        replace_with_fifo(lease)
    return cache, leases


@pytest.mark.timeout(30)
def test_f10_lease_fifo_does_not_block_opening_a_cache(
    lease_fifos: tuple[Path, list[Path]],
) -> None:
    cache, fifos = lease_fifos
    with FifoWatchdog(fifos, GRACE) as watchdog:
        ids, error = outcome(lambda: served_ids(cache, list(range(8))))
    assert not watchdog.fired, f"opening the cache blocked on the FIFO {fifos[0]}"
    assert ids == list(range(8)), f"the cache must still serve (a lease is best effort): {error!r}"


@pytest.mark.timeout(30)
def test_f10_lease_fifo_does_not_block_list(
    lease_fifos: tuple[Path, list[Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    cache, fifos = lease_fifos
    with FifoWatchdog(fifos, GRACE) as watchdog:
        outcome(lambda: cli(capsys, "list", "--cache-dir", str(cache)))
    assert not watchdog.fired, f"`shardcache list` blocked on the FIFO {fifos[0]}"


@pytest.mark.timeout(30)
def test_f10_staged_shard_fifo_does_not_block_a_resumed_build(tmp_path: Path) -> None:
    """A FIFO named like a finished shard of an interrupted build: resume hung, lock held."""
    cache, items = tmp_path / "cache", list(range(12))
    FlakyLoader.FAIL_FROM = 6
    try:
        _, error = outcome(
            lambda: ensure_cache(cache, "train", items, FlakyLoader(), shard_bytes=128)
        )
    finally:
        FlakyLoader.FAIL_FROM = None
    assert isinstance(error, BadSamplesError), error
    staged = sorted((cache / ".staging").rglob("shard-*"))
    assert len(staged) >= 2, "the interrupted build left no shards to resume"
    replace_with_fifo(staged[1])
    with FifoWatchdog([staged[1]], GRACE) as watchdog:
        dataset, error = outcome(
            lambda: ensure_cache(cache, "train", items, FlakyLoader(), shard_bytes=128)
        )
    assert not watchdog.fired, f"the resumed build blocked on the FIFO {staged[1].name}"
    assert dataset is not None, f"the resumed build failed: {error!r}"
    assert len(dataset) == 12
    dataset.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("command", ["list", "info", "clear"])
def test_f10_manifest_fifo_does_not_block_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """``manifest.json`` a FIFO: list, info and even ``clear --all`` hung."""
    cache = tmp_path / "cache"
    published = build(cache, list(range(8)))
    manifest = published / "manifest.json"
    replace_with_fifo(manifest)
    argv = {
        "list": ["list", "--json"],
        "info": ["info", published.name],
        "clear": ["clear", "--all", "--yes"],
    }[command]
    with FifoWatchdog([manifest], GRACE) as watchdog:
        result, error = outcome(lambda: cli(capsys, *argv, "--cache-dir", str(cache)))
    assert not watchdog.fired, f"`shardcache {' '.join(argv)}` blocked on {manifest}"
    assert error is None, error
    assert result[0] in {0, 1}, result


@pytest.mark.timeout(30)
def test_f10_neighbour_items_fifo_does_not_block_a_build(tmp_path: Path) -> None:
    """Explaining a miss read the nearest cache's ``items.json``: a FIFO hung every build."""
    cache = tmp_path / "cache"
    neighbour = build(cache, list(range(6)))
    items_file = neighbour / "items.json"
    assert items_file.is_file(), "the layout changed: no items.json, update this test"
    replace_with_fifo(items_file)
    with FifoWatchdog([items_file], GRACE) as watchdog:
        ids, error = outcome(lambda: served_ids(cache, list(range(10, 16))))
    assert not watchdog.fired, f"building a new cache blocked on the neighbour's {items_file}"
    assert ids == list(range(10, 16)), error


# ---- finding 11: odd neighbours never break a build ------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000


def _edit_manifest(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    manifest = path / "manifest.json"
    manifest.write_text(change(manifest.read_text()))


def _key_inputs_list(text: str) -> str:
    data = json.loads(text)
    data["key_inputs"] = []
    return json.dumps(data)


def _loader_a_string(text: str) -> str:
    data = json.loads(text)
    data["key_inputs"]["loader"] = "ImageLoader"
    return json.dumps(data)


def _deeply_nested_manifest(text: str) -> str:
    return text.rstrip().rstrip("}") + f', "notes": {DEEP}}}'


NEIGHBOURS = {
    "key_inputs-not-a-dict": lambda path: _edit_manifest(path, _key_inputs_list),
    "loader-not-a-dict": lambda path: _edit_manifest(path, _loader_a_string),
    "manifest-deeply-nested": lambda path: _edit_manifest(path, _deeply_nested_manifest),
    "items-deeply-nested": lambda path: (path / "items.json").write_text(DEEP),
    "items-a-dict": lambda path: (path / "items.json").write_text('{"a": 1}'),
}


@pytest.mark.parametrize("damage", list(NEIGHBOURS))
def test_f11_odd_neighbour_never_breaks_a_build(tmp_path: Path, damage: str) -> None:
    """The nearest cache of the subset, read to explain a miss, is skipped when odd."""
    cache = tmp_path / "cache"
    neighbour = build(cache, list(range(6)))
    NEIGHBOURS[damage](neighbour)
    ids, error = outcome(lambda: served_ids(cache, list(range(10, 16))))
    assert ids == list(range(10, 16)), f"a neighbour with {damage} broke the build: {error!r}"


# ---- finding 12: a relative cache_dir and os.chdir --------------------------------------------


def test_f12_relative_cache_dir_survives_chdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shardcache import CachingDataModule

    (tmp_path / "launch").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "launch")
    module = CachingDataModule(
        {"train": list(range(8))}, TinyLoader(), cache="disk", cache_dir="caches", batch_size=8
    )
    module.setup("fit")
    monkeypatch.chdir(tmp_path / "elsewhere")  # Hydra and job scripts do this
    batches, error = outcome(lambda: list(module.unshuffled_train_dataloader()))
    module.teardown("fit")
    assert batches is not None, f"reading after os.chdir failed: {error!r}"
    assert [tiny_sample_id(row) for row in batches[0][0]] == list(range(8))


# ---- finding 13: clear between setup() and the first read ---------------------------------


@pytest.mark.parametrize("mmap", ["1", "0"], ids=["mmap", "no-mmap"])
def test_f13_clear_after_setup_does_not_break_the_run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    mmap: str,
) -> None:
    """The README: clearing is safe while processes read. It must hold from ``setup()`` on."""
    from shardcache import CachingDataModule

    monkeypatch.setenv("SHARDCACHE_MMAP", mmap)
    cache = tmp_path / "cache"
    module = CachingDataModule(
        {"train": list(range(16))}, TinyLoader(), cache="disk", cache_dir=cache, batch_size=4
    )
    module.setup("fit")
    status, output = cli(capsys, "clear", "--all", "--yes", "--cache-dir", str(cache))
    assert status == 0, output
    batches, error = outcome(lambda: list(module.unshuffled_train_dataloader()))
    module.teardown("fit")
    assert batches is not None, f"the first read after `clear` failed: {error!r}"
    assert [tiny_sample_id(row) for tensor, _ in batches for row in tensor] == list(range(16))


def test_f13_a_dataset_unpickled_after_clear_names_what_is_gone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a spawned DataLoader worker meets when the cache was cleared after setup().

    Mappings cannot be pickled, so such a worker opens the shards by name: the documented
    limit of the promise. Its first read must say so, not only "shard is missing".
    """
    import pickle

    cache = tmp_path / "cache"
    dataset = ensure_cache(cache, "train", list(range(8)), TinyLoader())
    state = pickle.dumps(dataset)
    status, output = cli(capsys, "clear", "--all", "--yes", "--cache-dir", str(cache))
    assert status == 0, output
    assert tiny_sample_id(dataset[3][0]) == 3  # this process keeps its mappings
    dataset.close()
    _, error = outcome(lambda: pickle.loads(state)[3])  # noqa: S301 (bytes we just pickled)
    assert isinstance(error, CorruptCacheError), error
    assert "spawn" in str(error), error
