"""The disk tier's acceptance: same samples as the other tiers, decoded once, ever.

Real shards, locks and processes: a cache built by one DataModule is found by the next one,
by another Python process, and by four processes racing to build it.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import shutil
from pathlib import Path
from typing import Any

import platformdirs
import pytest
import torch
from torch.utils.data import DataLoader

from shardcache import CachingDataModule
from shardcache.store import CacheDataset, ensure_cache, resolve_cache_dir
from shardcache.tiers.none import RawDataset
from support.builds import published
from support.decodes import decode_count, decoded_items
from support.loaders import (
    FingerprintLoader,
    RichLoader,
    SeededLoader,
    make_items,
    rich_items,
    special_floats,
)
from support.processes import DEADLINE, run_python, wait_for
from support.samples import (
    dataset_differences,
    dataset_digest,
    sample_differences,
    tensor_bytes,
)

RICH_ITEMS = 12


def served_train(datamodule: CachingDataModule) -> Any:
    """The dataset behind the DataModule's unshuffled training loader (after setup)."""
    datamodule.setup("fit")
    return datamodule.unshuffled_train_dataloader().dataset


def published_names(cache_dir: Path) -> list[str]:
    """Names of what is published in ``cache_dir``."""
    return [path.name for path in published(cache_dir)]


# ---- tier equivalence ---------------------------------------------------------------------------


def test_every_tier_serves_bitwise_equal_samples_and_decodes_once(
    tmp_path: Path, cache_dir: Path
) -> None:
    split = {"train": rich_items(RICH_ITEMS)}

    def datamodule(tier: str, log: str, parallel: int = -1) -> CachingDataModule:
        loader = RichLoader(tmp_path / log)
        return CachingDataModule(split, loader, parallel=parallel, cache=tier, cache_dir=cache_dir)

    none = served_train(datamodule("none", "none.log"))
    expected = [none[index] for index in range(RICH_ITEMS)]
    memory = served_train(datamodule("memory", "memory.log"))
    building = datamodule("disk", "build.log")
    building.prepare_data()
    built = served_train(building)
    fresh = served_train(datamodule("disk", "fresh.log"))  # a new DataModule and CacheDataset
    in_workers = served_train(datamodule("disk", "workers.log", parallel=2))
    from_workers = list(DataLoader(in_workers, batch_size=None, num_workers=2, timeout=DEADLINE))

    # The DataLoader reads the tier's CacheDataset through a ServedDataset (narrow batches).
    assert isinstance(built.dataset, CacheDataset)
    assert isinstance(fresh.dataset, CacheDataset)
    assert fresh.dataset is not built.dataset
    assert dataset_differences(expected, memory) == []
    assert dataset_differences(expected, built) == []
    assert dataset_differences(expected, fresh) == []
    assert dataset_differences(expected, from_workers) == []
    counts = {
        log: decode_count(tmp_path / log)
        for log in ("memory.log", "build.log", "fresh.log", "workers.log")
    }
    assert counts == {
        "memory.log": RICH_ITEMS,
        "build.log": RICH_ITEMS,
        "fresh.log": 0,
        "workers.log": 0,
    }


def test_dtypes_shapes_and_json_types_survive_the_disk(tmp_path: Path, cache_dir: Path) -> None:
    items = rich_items(RICH_ITEMS)
    dataset = ensure_cache(cache_dir, "train", items, RichLoader(tmp_path / "log"))

    dtypes = [dataset[index][0].dtype for index in range(6)]
    shapes = [tuple(dataset[index][0].shape) for index in range(3)]
    tensor, metadata = dataset[5]  # the float32 sample that holds NaN, infinities and -0.0

    assert dtypes == [
        torch.uint8,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.bool,
        torch.float32,
    ]
    assert shapes == [(1, 2, 3), (2, 3, 3), (3, 4, 3)]
    assert tensor_bytes(tensor.reshape(-1)[:7]) == tensor_bytes(special_floats())
    assert (metadata["mask"].dtype, tuple(metadata["mask"].shape)) == (torch.bool, (3, 3))
    assert (metadata["counts"].dtype, tuple(metadata["counts"].shape)) == (torch.int32, (1, 6))
    assert {
        name: type(metadata[name])
        for name in ("label", "big", "score", "whole_float", "flag", "missing", "text")
    } == {
        "label": int,
        "big": int,
        "score": float,
        "whole_float": float,
        "flag": bool,
        "missing": type(None),
        "text": str,
    }
    assert metadata["big"] == 2**53 + 1
    assert metadata["nested"] == {
        "ints": [1, -7, 0],
        "mixed": [1.5, "x", None, True, {"deep": []}],
        "empty": {},
    }
    assert list(metadata) == list(RichLoader(tmp_path / "x").sample(items[5])[1])


@pytest.mark.slow
def test_datamodule_batches_with_two_workers_are_equal_across_tiers(
    tmp_path: Path, cache_dir: Path
) -> None:
    split = {"train": make_items(10)}
    batches = {}
    for tier in ("none", "memory", "disk"):
        datamodule = CachingDataModule(
            split,
            SeededLoader(tmp_path / f"{tier}.log"),
            batch_size=4,
            parallel=2,
            cache=tier,
            cache_dir=cache_dir,
        )
        datamodule.prepare_data()
        datamodule.setup("fit")
        batches[tier] = list(datamodule.unshuffled_train_dataloader())
        datamodule.teardown("fit")

    assert [len(batches[tier]) for tier in batches] == [3, 3, 3]
    for tier in ("memory", "disk"):
        for number, (expected, actual) in enumerate(
            zip(batches["none"], batches[tier], strict=True)
        ):
            assert sample_differences(expected, actual, f"{tier} batch {number}") == []
    assert decode_count(tmp_path / "disk.log") == 10  # the build; the workers decode nothing


# ---- later runs: other processes ----------------------------------------------------------

NO_LIGHTNING_SCRIPT = """
import json, sys
from pathlib import Path

import shardcache.store as store
from support.loaders import RichLoader, SeededLoader, make_items, rich_items
from support.samples import dataset_digest

cache_dir, rich_log, plain_log, out, count = sys.argv[1:6]
items = rich_items(int(count))
existing = store.ensure_cache(cache_dir, "train", items, RichLoader(rich_log))
built = store.ensure_cache(cache_dir, "plain", make_items(10), SeededLoader(plain_log))
reopened = store.CacheDataset(built.path)
Path(out).write_text(json.dumps({
    "existing": dataset_digest(existing),
    "reopened": dataset_digest(reopened),
    "lightning": sorted(
        name for name in sys.modules if name.split(".")[0] in {"lightning", "pytorch_lightning"}
    ),
}))
"""


@pytest.mark.slow
def test_another_process_without_lightning_reads_the_cache_and_builds_one(
    tmp_path: Path, cache_dir: Path
) -> None:
    """A later run in a fresh process decodes nothing, and the store needs no Lightning."""
    split = {"train": rich_items(RICH_ITEMS)}
    datamodule = CachingDataModule(
        split, RichLoader(tmp_path / "first.log"), cache="disk", cache_dir=cache_dir
    )
    datamodule.prepare_data()
    expected_rich = dataset_digest(RawDataset("train", split["train"], RichLoader(tmp_path / "x")))
    expected_plain = dataset_digest(
        RawDataset("plain", make_items(10), SeededLoader(tmp_path / "y"))
    )
    script = tmp_path / "no_lightning.py"
    script.write_text(NO_LIGHTNING_SCRIPT)
    out = tmp_path / "out.json"

    result = run_python(
        script, cache_dir, tmp_path / "second.log", tmp_path / "plain.log", out, RICH_ITEMS
    )

    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report == {"existing": expected_rich, "reopened": expected_plain, "lightning": []}
    assert decode_count(tmp_path / "first.log") == RICH_ITEMS
    assert decode_count(tmp_path / "second.log") == 0
    assert decode_count(tmp_path / "plain.log") == 10


RACE_SPLIT = {"train": make_items(30), "validation": make_items(10, "val")}


def race_prepare_data(cache_dir: Path, decode_log: Path, ready: Path, go: Path, out: Path) -> None:
    """One racer: make a DataModule, wait at the barrier, prepare and read everything."""
    datamodule = CachingDataModule(
        RACE_SPLIT, SeededLoader(decode_log, delay=0.01), cache="disk", cache_dir=cache_dir
    )
    ready.touch()
    wait_for(go)
    datamodule.prepare_data()
    datamodule.setup("fit")
    served = {
        "train": datamodule.unshuffled_train_dataloader().dataset,
        "validation": datamodule.val_dataloader()["validation"].dataset,
    }
    out.write_text(json.dumps({name: dataset_digest(data) for name, data in served.items()}))


@pytest.mark.slow
def test_four_processes_racing_prepare_data_decode_each_item_once(
    tmp_path: Path, cache_dir: Path, decode_log: Path
) -> None:
    # Forked, not spawned: four fresh interpreters importing Lightning cost far more than
    # the race itself. Each racer is its own process with its own locks and mappings.
    racers = 4
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{n}" for n in range(racers)]
    outs = [tmp_path / f"out-{n}.json" for n in range(racers)]
    context = multiprocessing.get_context("fork")
    processes = [
        context.Process(
            target=race_prepare_data, args=(cache_dir, decode_log, ready[n], go, outs[n])
        )
        for n in range(racers)
    ]
    for process in processes:
        process.start()
    try:
        for path in ready:
            wait_for(path)
        go.touch()  # the barrier: all four call prepare_data() at once
        for process in processes:
            process.join(DEADLINE)
    finally:
        for process in processes:
            process.kill()  # a no-op for those that exited
    expected = {
        name: dataset_digest(RawDataset(name, items, SeededLoader(tmp_path / "x")))
        for name, items in RACE_SPLIT.items()
    }
    results = [json.loads(out.read_text()) if out.exists() else None for out in outs]

    exitcodes = [process.exitcode for process in processes]
    assert (exitcodes, decode_count(decode_log)) == ([0] * racers, 40)
    assert results == [expected] * racers
    assert sorted(map(json.dumps, decoded_items(decode_log))) == sorted(
        map(json.dumps, RACE_SPLIT["train"] + RACE_SPLIT["validation"])
    )


# ---- invalidation ----------------------------------------------------------------------------


def raw_samples(items: list[Any], loader: Any) -> list[Any]:
    return [RawDataset("train", items, loader)[index] for index in range(len(items))]


def test_changing_one_item_builds_a_new_cache_with_the_new_item(
    cache_dir: Path, decode_log: Path
) -> None:
    items = make_items(6)
    first = ensure_cache(cache_dir, "train", items, SeededLoader(decode_log))
    changed = [*items[:3], ["img/replaced.png", 2], *items[4:]]

    second = ensure_cache(cache_dir, "train", changed, SeededLoader(decode_log))

    assert second.path != first.path
    assert decode_count(decode_log) == 12
    assert dataset_differences(raw_samples(changed, SeededLoader(decode_log)), second) == []
    assert dataset_differences(raw_samples(items, SeededLoader(decode_log)), first) == []


def test_changing_the_order_builds_a_new_cache_in_the_new_order(
    cache_dir: Path, decode_log: Path
) -> None:
    items = make_items(6)
    first = ensure_cache(cache_dir, "train", items, SeededLoader(decode_log))
    reordered = items[::-1]

    second = ensure_cache(cache_dir, "train", reordered, SeededLoader(decode_log))

    assert second.path != first.path
    assert decode_count(decode_log) == 12
    assert dataset_differences(raw_samples(reordered, SeededLoader(decode_log)), second) == []
    assert second.labels() == [item[1] for item in reordered]


def test_changing_a_loader_attribute_builds_a_new_cache(cache_dir: Path, decode_log: Path) -> None:
    items = make_items(6)
    first = ensure_cache(cache_dir, "train", items, SeededLoader(decode_log, scale=1.0))

    second = ensure_cache(cache_dir, "train", items, SeededLoader(decode_log, scale=2.0))

    assert second.path != first.path
    assert decode_count(decode_log) == 12
    assert (
        dataset_differences(raw_samples(items, SeededLoader(decode_log, scale=2.0)), second) == []
    )
    assert (second[0][0] == 2 * first[0][0]).all()


def test_same_inputs_with_a_new_loader_instance_is_a_hit(cache_dir: Path, decode_log: Path) -> None:
    items = make_items(6)
    first = ensure_cache(cache_dir, "train", items, SeededLoader(decode_log))
    # The decode log and delay are private attributes: not part of the key.
    other_log = cache_dir.parent / "other.log"

    again = ensure_cache(cache_dir, "train", list(items), SeededLoader(other_log, delay=0.5))

    assert again.path == first.path
    assert (decode_count(decode_log), decode_count(other_log)) == (6, 0)
    assert dataset_differences(first, again) == []


def test_a_loader_fingerprint_is_its_identity(cache_dir: Path, decode_log: Path) -> None:
    items = make_items(5)
    first = ensure_cache(cache_dir, "train", items, FingerprintLoader(decode_log, version="1"))
    # Same fingerprint: a hit even though a public attribute differs (the loader vouches).
    same = ensure_cache(
        cache_dir, "train", items, FingerprintLoader(decode_log, version="1", scale=3.0)
    )
    decodes_after_hit = decode_count(decode_log)
    bumped = ensure_cache(cache_dir, "train", items, FingerprintLoader(decode_log, version="2"))

    assert first.manifest.key_inputs["loader"] == {"fingerprint": "synthetic-v1"}
    assert (same.path, decodes_after_hit) == (first.path, 5)
    assert bumped.path != first.path
    assert decode_count(decode_log) == 10


def test_a_copied_cache_directory_is_still_a_hit(tmp_path: Path, decode_log: Path) -> None:
    items = make_items(6)
    original = tmp_path / "original"
    expected = raw_samples(items, SeededLoader(tmp_path / "x"))
    ensure_cache(original, "train", items, SeededLoader(decode_log)).close()
    copy = tmp_path / "elsewhere" / "copied"
    shutil.copytree(original, copy)
    shutil.rmtree(original)

    dataset = ensure_cache(copy, "train", items, SeededLoader(decode_log))

    assert dataset.path.parent == copy
    assert decode_count(decode_log) == 6
    assert dataset_differences(expected, dataset) == []


def test_each_subset_has_its_own_cache_and_a_new_subset_reuses_the_others(
    cache_dir: Path, decode_log: Path
) -> None:
    split = {"train": make_items(6), "validation": make_items(4, "val")}
    CachingDataModule(
        split, SeededLoader(decode_log), cache="disk", cache_dir=cache_dir
    ).prepare_data()
    before = published_names(cache_dir)
    decodes_before = decode_count(decode_log)

    bigger = {**split, "test": make_items(3, "test")}
    datamodule = CachingDataModule(
        bigger, SeededLoader(decode_log), cache="disk", cache_dir=cache_dir
    )
    datamodule.prepare_data()
    datamodule.setup("test")
    test = datamodule.test_dataloader()["test"].dataset

    assert [name.split("-")[0] for name in before] == ["train", "validation"]
    assert decodes_before == 10
    assert decoded_items(decode_log)[10:] == make_items(3, "test")
    assert set(published_names(cache_dir)) - set(before) == {test.path.name}
    assert test.path.name.startswith("test-")
    assert dataset_differences(raw_samples(bigger["test"], SeededLoader(decode_log)), test) == []


def test_identical_item_lists_in_two_subsets_share_one_cache(
    cache_dir: Path, decode_log: Path
) -> None:
    items = make_items(6)
    split = {"train": items, "monitor-train": list(items)}
    datamodule = CachingDataModule(
        split, SeededLoader(decode_log), cache="disk", cache_dir=cache_dir
    )
    datamodule.prepare_data()
    datamodule.setup("fit")

    train = datamodule.unshuffled_train_dataloader().dataset
    monitor = datamodule.val_dataloader()["monitor-train"].dataset

    assert decode_count(decode_log) == 6
    assert published_names(cache_dir) == [train.path.name]
    assert monitor.path == train.path


# ---- a miss says why ---------------------------------------------------------------------------


def miss_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno == logging.INFO and record.getMessage().startswith("no cache for")
    ]


def test_a_miss_after_an_attribute_change_names_the_nearest_cache_and_the_attribute(
    cache_dir: Path, decode_log: Path, caplog: pytest.LogCaptureFixture
) -> None:
    split = {"train": make_items(6)}
    CachingDataModule(
        split, SeededLoader(decode_log, scale=1.5), cache="disk", cache_dir=cache_dir
    ).prepare_data()
    (old_name,) = published_names(cache_dir)
    caplog.set_level(logging.INFO, logger="shardcache")

    CachingDataModule(
        split, SeededLoader(decode_log, scale=2.5), cache="disk", cache_dir=cache_dir
    ).prepare_data()

    (line,) = miss_lines(caplog)
    assert f"nearest is {old_name}" in line
    assert "loader attribute 'scale' 1.5 -> 2.5" in line


def test_a_miss_after_an_item_change_names_the_item(
    cache_dir: Path, decode_log: Path, caplog: pytest.LogCaptureFixture
) -> None:
    items = make_items(6)
    first = ensure_cache(cache_dir, "train", items, SeededLoader(decode_log))
    changed = [*items[:4], ["img/new.png", 1], items[5]]
    caplog.set_level(logging.INFO, logger="shardcache")

    ensure_cache(cache_dir, "train", changed, SeededLoader(decode_log))

    (line,) = miss_lines(caplog)
    assert f"nearest is {first.path.name}" in line
    assert "[4]" in line
    assert "img/new.png" in line
    assert "[3]" not in line


def test_a_first_build_says_there_was_no_earlier_cache(
    cache_dir: Path, decode_log: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shardcache")

    ensure_cache(cache_dir, "train", make_items(2), SeededLoader(decode_log))

    (line,) = miss_lines(caplog)
    assert "no earlier cache of subset 'train'" in line


# ---- where caches live -------------------------------------------------------------------------


def test_the_cache_dir_argument_wins_over_the_environment(
    tmp_path: Path, decode_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHARDCACHE_DIR", str(tmp_path / "from-env"))
    argument = tmp_path / "from-argument"

    CachingDataModule(
        {"train": make_items(2)}, SeededLoader(decode_log), cache="disk", cache_dir=argument
    ).prepare_data()

    assert len(published_names(argument)) == 1
    assert not (tmp_path / "from-env").exists()
    assert resolve_cache_dir(argument) == argument


def test_shardcache_dir_is_read_when_the_cache_is_needed(
    tmp_path: Path, decode_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # shardcache is imported and the DataModule made before the variable is set.
    datamodule = CachingDataModule({"train": make_items(2)}, SeededLoader(decode_log), cache="disk")
    monkeypatch.setenv("SHARDCACHE_DIR", str(tmp_path / "from-env"))

    datamodule.prepare_data()

    assert len(published_names(tmp_path / "from-env")) == 1
    assert resolve_cache_dir() == tmp_path / "from-env"


def test_without_argument_or_variable_the_user_cache_dir_is_used(
    tmp_path: Path, decode_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SHARDCACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # platformdirs honours it
    expected = Path(platformdirs.user_cache_dir("shardcache"))

    CachingDataModule(
        {"train": make_items(2)}, SeededLoader(decode_log), cache="disk"
    ).prepare_data()

    assert resolve_cache_dir() == expected
    assert expected.is_relative_to(tmp_path / "xdg")
    assert len(published_names(expected)) == 1
