"""CachingDataModule acceptance tests: a real Trainer, stages, loader settings, errors."""

from __future__ import annotations

import os
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import Any

import lightning
import pytest
import torch
from torch.utils.data import WeightedRandomSampler

from _foundation_helpers import (
    BadLoader,
    CountingLoader,
    TextLabelLoader,
    TinyModel,
    add_one,
    decode_counts,
    decoded,
    make_split,
    raised_by,
)
from shardcache import (
    BadSamplesError,
    CachingDataModule,
    ConfigurationError,
    SampleError,
    SplitError,
)

TIERS = ["none", "memory", "disk"]
FULL = {"train": 6, "validation": 4, "monitor-train": 6, "test": 3}


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "decodes.log"


def datamodule(
    tmp_path: Path,
    split: dict[str, list[Any]],
    loader: Any,
    tier: str,
    **options: Any,
) -> CachingDataModule:
    return CachingDataModule(split, loader, cache=tier, cache_dir=tmp_path / "cache", **options)


def values(batches: Any) -> list[int]:
    """The sample values a loader served, after checking each tensor holds its value."""
    served = []
    for tensor, metadata in batches:
        batch_values = metadata["value"].tolist()
        assert tensor.flatten(1).tolist() == [[float(v)] * 4 for v in batch_values]
        served.extend(batch_values)
    return served


def batch_sizes(loader: Any) -> list[int]:
    return [len(tensor) for tensor, _ in loader]


def published(cache_dir: Path) -> list[str]:
    """Subset names of the published caches (``<subset>-<key>``) in ``cache_dir``."""
    if not cache_dir.exists():
        return []
    return sorted(
        p.name.rsplit("-", 1)[0] for p in cache_dir.iterdir() if p.is_dir() and p.name[0] != "."
    )


# ---- a real Trainer -------------------------------------------------------------------------


@pytest.mark.slow
# Lightning 2.6's CombinedLoader builds a torch LeafSpec, which torch 2.14 deprecates.
@pytest.mark.parametrize(
    ("tier", "parallel"), [*[(tier, -1) for tier in TIERS], ("memory", 2), ("disk", 2)]
)
def test_trainer_fits_and_tests_with_every_tier(
    tmp_path: Path, log: Path, tier: str, parallel: int
) -> None:
    split = make_split(FULL)
    dm = datamodule(tmp_path, split, CountingLoader(log), tier, batch_size=2, parallel=parallel)
    model = TinyModel()
    trainer = lightning.Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)

    # Every training epoch is a permutation of the train subset, in batches of two.
    assert [sorted(epoch) for epoch in model.train_values] == [list(range(6))] * 2
    # dataloader_idx 0 is "validation", 1 is "monitor-train", both unshuffled, per epoch.
    assert model.val_batches == {0: 2 * 2, 1: 2 * 3}
    assert model.val_values == {0: [100, 101, 102, 103] * 2, 1: list(range(200, 206)) * 2}
    assert model.test_batches == {0: 2}
    counts = decode_counts(log)
    if tier == "none":
        # Every access decodes: two epochs of train, validation and monitor, one of test.
        expected = {
            v: 2 for subset in ("train", "validation", "monitor-train") for *_, v in split[subset]
        }
        expected.update({v: 1 for *_, v in split["test"]})
    else:
        # memory: once per item in this process; disk: once, ever (prepare_data built all).
        expected = {v: 1 for items in split.values() for *_, v in items}
    assert counts == expected


# ---- stages, prepare_data, teardown ---------------------------------------------------------


@pytest.mark.parametrize("tier", TIERS)
def test_prepare_data_sets_no_state(tmp_path: Path, log: Path, tier: str) -> None:
    split = make_split(FULL)
    dm = datamodule(tmp_path, split, CountingLoader(log), tier)
    before = {name: (value, repr(value)) for name, value in vars(dm).items()}
    dm.prepare_data()
    after = {name: (value, repr(value)) for name, value in vars(dm).items()}
    assert after.keys() == before.keys()
    assert [
        n for n in after if after[n][0] is not before[n][0] or after[n][1] != before[n][1]
    ] == []
    if tier == "disk":
        # Only the caches on disk change: one per subset, every item decoded once.
        assert published(tmp_path / "cache") == sorted(split)
        assert sorted(decode_counts(log).values()) == [1] * sum(FULL.values())
    else:
        assert decoded(log) == []
        assert published(tmp_path / "cache") == []


@pytest.mark.parametrize("tier", ["memory", "disk"])
def test_setup_fit_opens_only_train_validation_and_monitors(
    tmp_path: Path, log: Path, tier: str
) -> None:
    dm = datamodule(tmp_path, make_split(FULL), CountingLoader(log), tier)
    dm.setup("fit")
    assert {name.rsplit("/", 1)[0] for name, *_ in decoded(log)} == {
        "train",
        "validation",
        "monitor-train",
    }
    if tier == "disk":
        assert published(tmp_path / "cache") == ["monitor-train", "train", "validation"]
    assert set(dm.val_dataloader()) == {"validation", "monitor-train"}
    with pytest.raises(ConfigurationError, match=r"subset 'test' is not set up"):
        dm.test_dataloader()


@pytest.mark.parametrize(
    ("stage", "opened"),
    [("validate", {"validation", "monitor-train"}), ("test", {"test"}), ("predict", {"test"})],
)
def test_setup_opens_what_the_stage_needs(
    tmp_path: Path, log: Path, stage: str, opened: set[str]
) -> None:
    dm = datamodule(tmp_path, make_split(FULL), CountingLoader(log), "memory")
    dm.setup(stage)
    assert {name.rsplit("/", 1)[0] for name, *_ in decoded(log)} == opened
    with pytest.raises(ConfigurationError, match=r"subset 'train' is not set up"):
        dm.train_dataloader()


@pytest.mark.parametrize("tier", TIERS)
def test_teardown_releases_the_stage_datasets(tmp_path: Path, log: Path, tier: str) -> None:
    dm = datamodule(tmp_path, make_split(FULL), CountingLoader(log), tier, batch_size=3)
    dm.setup("fit")
    dm.setup("test")
    dm.teardown("fit")
    for method in (dm.train_dataloader, dm.unshuffled_train_dataloader, dm.val_dataloader):
        with pytest.raises(ConfigurationError, match=r"is not set up: call setup\(\)"):
            method()
    # test is still set up, and serves its samples.
    assert values(dm.test_dataloader()["test"]) == [300, 301, 302]
    dm.teardown("test")
    with pytest.raises(ConfigurationError, match=r"subset 'test' is not set up"):
        dm.test_dataloader()


def test_unknown_stage_is_a_configuration_error(tmp_path: Path, log: Path) -> None:
    dm = datamodule(tmp_path, make_split(FULL), CountingLoader(log), "none")
    with pytest.raises(ConfigurationError, match=r"stage 'train' is not one of fit, validate"):
        dm.setup("train")


@pytest.mark.parametrize("tier", TIERS)
def test_missing_subset_is_a_split_error(tmp_path: Path, log: Path, tier: str) -> None:
    dm = datamodule(tmp_path, make_split({"train": 2, "validation": 2}), CountingLoader(log), tier)
    with pytest.raises(
        SplitError, match=r"setup\('test'\) needs subset 'test'; database_split has 'train', "
    ):
        dm.setup("test")
    no_train = datamodule(tmp_path, make_split({"validation": 2}), CountingLoader(log), tier)
    with pytest.raises(SplitError, match=r"setup\('fit'\) needs subset 'train'"):
        no_train.setup("fit")


@pytest.mark.parametrize("tier", TIERS)
def test_empty_subset_is_a_split_error(tmp_path: Path, log: Path, tier: str) -> None:
    split = make_split({"train": 3, "validation": 0})
    dm = datamodule(tmp_path, split, CountingLoader(log), tier)
    with pytest.raises(SplitError, match=r"subset 'validation' of database_split is empty"):
        dm.setup("fit")


# ---- cache tiers and their decodes ----------------------------------------------------------


def test_cache_samples_means_memory_and_cache_wins(tmp_path: Path, log: Path) -> None:
    split = make_split({"train": 3})
    memory = CachingDataModule(split, CountingLoader(log), True)  # mednet's positional flag
    assert memory.cache == "memory"
    memory.setup("fit")
    assert len(decoded(log)) == 3  # loaded into RAM at setup
    none = CachingDataModule(split, CountingLoader(log), cache_samples=True, cache="none")
    assert none.cache == "none"
    none.setup("fit")
    assert len(decoded(log)) == 3  # the none tier decodes nothing at setup
    disk = CachingDataModule(split, CountingLoader(log), True, cache="disk", cache_dir=tmp_path)
    assert disk.cache == "disk"
    assert CachingDataModule(split, CountingLoader(log)).cache == "none"


def test_unknown_tier_lists_the_valid_ones(tmp_path: Path, log: Path) -> None:
    with pytest.raises(ConfigurationError) as caught:
        CachingDataModule(make_split({"train": 1}), CountingLoader(log), cache="ram")  # type: ignore[arg-type]
    assert (
        str(caught.value) == "cache='ram' is not a cache tier; valid tiers are none, memory, disk"
    )


@pytest.mark.parametrize(
    "parallel", [-1, pytest.param(2, marks=pytest.mark.slow)], ids=["in-process", "workers"]
)
def test_memory_tier_decodes_each_item_once(tmp_path: Path, log: Path, parallel: int) -> None:
    split = make_split({"train": 6, "validation": 3, "test": 2})
    dm = datamodule(tmp_path, split, CountingLoader(log), "memory", batch_size=2, parallel=parallel)
    dm.setup("fit")
    for _ in range(3):
        assert sorted(values(dm.train_dataloader())) == list(range(6))
        assert values(dm.val_dataloader()["validation"]) == [100, 101, 102]
    assert values(dm.unshuffled_train_dataloader()) == list(range(6))
    assert decode_counts(log) == {v: 1 for *_, v in split["train"] + split["validation"]}


@pytest.mark.parametrize(
    "parallel", [-1, pytest.param(2, marks=pytest.mark.slow)], ids=["in-process", "workers"]
)
def test_none_tier_decodes_on_every_access(tmp_path: Path, log: Path, parallel: int) -> None:
    split = make_split({"train": 4, "validation": 2})
    dm = datamodule(tmp_path, split, CountingLoader(log), "none", batch_size=2, parallel=parallel)
    dm.setup("fit")
    assert decoded(log) == []
    train = dm.train_dataloader()
    for epoch in range(1, 3):
        assert sorted(values(train)) == [0, 1, 2, 3]
        assert decode_counts(log) == {0: epoch, 1: epoch, 2: epoch, 3: epoch}
    del train  # stops persistent workers


@pytest.mark.parametrize(
    ("tier", "parallel"),
    [
        *[(tier, -1) for tier in TIERS],
        *[pytest.param(tier, 2, marks=pytest.mark.slow) for tier in TIERS],
    ],
)
def test_in_place_transform_never_reaches_the_cache(
    tmp_path: Path, log: Path, tier: str, parallel: int
) -> None:
    split = make_split({"train": 4, "validation": 2})
    dm = datamodule(
        tmp_path,
        split,
        CountingLoader(log),
        tier,
        model_transforms=[add_one],
        batch_size=2,
        parallel=parallel,
    )
    dm.prepare_data()
    dm.setup("fit")
    train = dm.unshuffled_train_dataloader()
    validation = dm.val_dataloader()["validation"]
    for _ in range(3):
        served = [(t.flatten(1)[:, 0].tolist(), m["value"].tolist()) for t, m in train]
        assert served == [([1.0, 2.0], [0, 1]), ([3.0, 4.0], [2, 3])]
        assert [t.flatten().tolist() for t, _ in validation] == [[101.0] * 4 + [102.0] * 4]
    # The set-up datasets (the RAM cache, the mapped shards) still hold the original samples.
    dm.model_transforms = ()
    assert values(dm.unshuffled_train_dataloader()) == [0, 1, 2, 3]
    assert values(dm.val_dataloader()["validation"]) == [100, 101]


# ---- batches -------------------------------------------------------------------------------


def test_batch_chunk_count_serves_chunks(tmp_path: Path, log: Path) -> None:
    dm = datamodule(
        tmp_path,
        make_split({"train": 8, "validation": 4, "test": 2}),
        CountingLoader(log),
        "memory",
        batch_size=8,
        batch_chunk_count=4,
    )
    dm.setup("fit")
    dm.setup("test")
    loaders = [dm.train_dataloader(), dm.unshuffled_train_dataloader()]
    loaders += [*dm.val_dataloader().values(), *dm.test_dataloader().values()]
    assert [loader.batch_size for loader in loaders] == [2] * 4
    assert batch_sizes(dm.train_dataloader()) == [2, 2, 2, 2]


@pytest.mark.parametrize(("batch_size", "chunks"), [(8, 3), (2, 4), (8, 0)])
def test_batch_chunk_count_must_divide_batch_size(log: Path, batch_size: int, chunks: int) -> None:
    with pytest.raises(ConfigurationError) as caught:
        CachingDataModule(
            make_split({"train": 8}),
            CountingLoader(log),
            batch_size=batch_size,
            batch_chunk_count=chunks,
        )
    assert isinstance(caught.value, ValueError)
    message = str(caught.value)
    assert f"batch_size={batch_size}" in message
    assert f"batch_chunk_count={chunks}" in message


@pytest.mark.parametrize("batch_size", [0, -2, 1.5, True])
def test_batch_size_must_be_a_positive_int(log: Path, batch_size: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"batch_size=.* must be a positive int"):
        CachingDataModule(make_split({"train": 2}), CountingLoader(log), batch_size=batch_size)


@pytest.mark.parametrize("drop", [True, False])
def test_drop_incomplete_batch_drops_the_last_train_batch_only(
    tmp_path: Path, log: Path, drop: bool
) -> None:
    split = make_split({"train": 5, "validation": 5})
    dm = datamodule(
        tmp_path, split, CountingLoader(log), "memory", batch_size=2, drop_incomplete_batch=drop
    )
    dm.setup("fit")
    assert batch_sizes(dm.train_dataloader()) == ([2, 2] if drop else [2, 2, 1])
    assert batch_sizes(dm.unshuffled_train_dataloader()) == [2, 2, 1]
    assert batch_sizes(dm.val_dataloader()["validation"]) == [2, 2, 1]
    balanced = datamodule(
        tmp_path,
        split,
        CountingLoader(log),
        "none",
        balance_sampler_by_class=True,
        batch_size=2,
        drop_incomplete_batch=drop,
    )
    balanced.setup("fit")
    assert batch_sizes(balanced.train_dataloader()) == ([2, 2] if drop else [2, 2, 1])


# ---- parallel ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parallel", "workers"), [(-1, 0), (-5, 0), (0, len(os.sched_getaffinity(0))), (2, 2)]
)
def test_parallel_sets_loader_workers(
    tmp_path: Path, log: Path, parallel: int, workers: int
) -> None:
    dm = datamodule(
        tmp_path, make_split(FULL), CountingLoader(log), "none", parallel=parallel, batch_size=2
    )
    dm.setup("fit")
    dm.setup("test")
    loaders = [dm.train_dataloader(), dm.unshuffled_train_dataloader()]
    loaders += [*dm.val_dataloader().values(), *dm.test_dataloader().values()]
    assert [loader.num_workers for loader in loaders] == [workers] * 5
    assert [loader.persistent_workers for loader in loaders] == [workers > 0] * 5
    assert [loader.pin_memory for loader in loaders] == [torch.cuda.is_available()] * 5


@pytest.mark.parametrize("parallel", ["2", 1.5, True, None])
def test_parallel_must_be_an_int(log: Path, parallel: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"parallel=.*: expected an int"):
        CachingDataModule(make_split({"train": 2}), CountingLoader(log), parallel=parallel)


@pytest.mark.slow
@pytest.mark.parametrize("tier", TIERS)
def test_worker_processes_serve_the_right_samples(tmp_path: Path, log: Path, tier: str) -> None:
    split = make_split({"train": 7, "validation": 5, "monitor-train": 3})
    dm = datamodule(tmp_path, split, CountingLoader(log), tier, batch_size=2, parallel=2)
    dm.setup("fit")
    train = dm.train_dataloader()
    assert train.num_workers == 2
    for _ in range(2):
        assert sorted(values(train)) == list(range(7))
    loaders = dm.val_dataloader()
    assert values(loaders["validation"]) == [100, 101, 102, 103, 104]
    assert values(loaders["monitor-train"]) == [200, 201, 202]
    metadata = next(iter(dm.unshuffled_train_dataloader()))[1]
    assert metadata["name"] == ["train/0", "train/1"]
    assert metadata["label"].tolist() == [0, 1]


# ---- balanced sampling through the DataModule ----------------------------------------------


@pytest.mark.parametrize("tier", TIERS)
def test_balanced_train_loader_weighs_labels_without_decoding(
    tmp_path: Path, log: Path, tier: str
) -> None:
    labels = [0] * 9 + [1]
    split = make_split({"train": 10}, labels={"train": labels})
    dm = datamodule(
        tmp_path, split, CountingLoader(log), tier, balance_sampler_by_class=True, batch_size=5
    )
    dm.setup("fit")
    decodes_at_setup = len(decoded(log))
    loader = dm.train_dataloader()
    # Building the sampler reads loader.label(item) (or labels kept at load): no decode.
    assert len(decoded(log)) == decodes_at_setup == (0 if tier == "none" else 10)
    sampler = loader.sampler
    assert isinstance(sampler, WeightedRandomSampler)
    assert sampler.replacement
    assert sampler.num_samples == 10
    expected = [Fraction(1, 18)] * 9 + [Fraction(1, 2)]
    assert sampler.weights.tolist() == pytest.approx([float(w) for w in expected])
    assert sum(batch_sizes(loader)) == 10  # as many draws as samples


def test_balanced_sampling_needs_integer_labels(tmp_path: Path, log: Path) -> None:
    # The samples' metadata carries integer labels; label(item) does not: it decides.
    dm = datamodule(
        tmp_path,
        make_split({"train": 4}),
        TextLabelLoader(log),
        "none",
        balance_sampler_by_class=True,
    )
    dm.setup("fit")
    with pytest.raises(ConfigurationError, match=r"needs integer labels: raw_data_loader.label"):
        dm.train_dataloader()
    assert decoded(log) == []


# ---- bad samples ---------------------------------------------------------------------------

BAD_KINDS = {
    "list": (
        "raw_data_loader.sample() returned a list of length 3, expected a (Tensor, dict) pair "
        "or a dict"
    ),
    "tensor": "raw_data_loader.sample() returned list as the sample, expected a torch.Tensor",
    "metadata": "raw_data_loader.sample() returned list as metadata, expected a dict",
}


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_sample_names_subset_index_and_item(tmp_path: Path, log: Path, kind: str) -> None:
    dm = datamodule(
        tmp_path, make_split({"train": 4}), BadLoader(log, kind, bad=[2]), "none", batch_size=1
    )
    dm.setup("fit")
    with pytest.raises(SampleError) as caught:
        list(dm.unshuffled_train_dataloader())
    assert str(caught.value) == f"train[2] (['train/2', 0, 2]): {BAD_KINDS[kind]}"
    error = caught.value
    assert (error.subset, error.index, error.item) == ("train", 2, ["train/2", 0, 2])
    assert isinstance(error, TypeError)


@pytest.mark.slow
@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_sample_in_a_worker_keeps_its_type(tmp_path: Path, log: Path, kind: str) -> None:
    dm = datamodule(
        tmp_path,
        make_split({"train": 4}),
        BadLoader(log, kind, bad=[2]),
        "none",
        batch_size=1,
        parallel=2,
    )
    dm.setup("fit")
    error = raised_by(dm.unshuffled_train_dataloader())
    # torch rebuilds the worker's exception in this process as type(error)(message).
    assert type(error) is SampleError
    assert "Caught SampleError in DataLoader worker process" in str(error)
    assert f"SampleError: train[2] (['train/2', 0, 2]): {BAD_KINDS[kind]}" in str(error)


@pytest.mark.parametrize(
    ("tier", "parallel"),
    [
        ("memory", -1),
        ("disk", -1),
        pytest.param("memory", 2, marks=pytest.mark.slow),
    ],
)
def test_load_reports_every_bad_sample(tmp_path: Path, log: Path, tier: str, parallel: int) -> None:
    loader = BadLoader(log, "metadata", bad=[1, 3])
    dm = datamodule(tmp_path, make_split({"train": 5}), loader, tier, parallel=parallel)
    with pytest.raises(BadSamplesError) as caught:
        dm.setup("fit")
    message = str(caught.value)
    assert message.startswith("2 of 5 items of subset 'train' could not be decoded:\n")
    assert f"train[1] (['train/1', 1, 1]): {BAD_KINDS['metadata']}" in message
    assert f"train[3] (['train/3', 1, 3]): {BAD_KINDS['metadata']}" in message
    assert len(caught.value.failures) == 2
    # Every item was decoded once: the report covers all failures in one go.
    assert decode_counts(log) == Counter({0: 1, 1: 1, 2: 1, 3: 1, 4: 1})
