"""CachingDataModule acceptance tests: a real Trainer, stages, loader settings, errors."""

from __future__ import annotations

import os
from collections import Counter
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning
import pytest
import torch
from lightning.pytorch.trainer.states import TrainerStatus
from torch.utils.data import WeightedRandomSampler

from shardcache import (
    BadSamplesError,
    CachingDataModule,
    ConfigurationError,
    SampleError,
    SplitError,
)
from support.builds import published
from support.decodes import decode_count, decoded_items
from support.loaders import BadValueLoader, TextLabelLoader, ValueLoader, add_one
from support.processes import raised_by
from support.trainers import quiet_trainer

TIERS = ["none", "memory", "disk"]
FULL = {"train": 6, "validation": 4, "monitor-train": 6, "test": 3}


SUBSET_OFFSETS = {"train": 0, "validation": 100, "monitor-train": 200, "test": 300}
"""Each subset's items carry distinct values, so a decode log says which subset it read."""


def make_split(
    sizes: dict[str, int], labels: dict[str, list[int]] | None = None
) -> dict[str, list[list[Any]]]:
    """Items ``[name, label, value]``; the sample of an item is filled with ``value``."""
    split: dict[str, list[list[Any]]] = {}
    for subset, size in sizes.items():
        offset = SUBSET_OFFSETS.get(subset, 400)
        chosen = (labels or {}).get(subset, [i % 2 for i in range(size)])
        split[subset] = [[f"{subset}/{i}", chosen[i], offset + i] for i in range(size)]
    return split


def decodes_by_value(log: Path) -> Counter[int]:
    """How many times each item (by value) was decoded, in every process."""
    return Counter(item[2] for item in decoded_items(log))


def datamodule(
    cache_dir: Path,
    split: dict[str, list[Any]],
    loader: Any,
    tier: str,
    **options: Any,
) -> CachingDataModule:
    return CachingDataModule(split, loader, cache=tier, cache_dir=cache_dir, **options)


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


def published_subsets(cache_dir: Path) -> list[str]:
    """Subset names of what is published (``<subset>-<key>``) in ``cache_dir``."""
    return sorted(path.name.rsplit("-", 1)[0] for path in published(cache_dir))


class TinyModel(lightning.LightningModule):
    """Counts batches and records the sample values each loader served."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.train_values: list[list[int]] = []  # one list per epoch
        self.val_batches: Counter[int] = Counter()
        self.val_values: dict[int, list[int]] = {}
        self.test_batches: Counter[int] = Counter()

    def on_train_epoch_start(self) -> None:
        self.train_values.append([])

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        tensor, metadata = batch
        values = metadata["value"].tolist()
        # The sample is filled with its value: check the data, not just the count.
        assert tensor.flatten(1).tolist() == [[float(v)] * 4 for v in values]
        self.train_values[-1].extend(values)
        loss: torch.Tensor = self.layer(tensor.flatten(1)).square().mean()
        return loss

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        tensor, metadata = batch
        self.val_batches[dataloader_idx] += 1
        self.val_values.setdefault(dataloader_idx, []).extend(metadata["value"].tolist())
        assert tensor.flatten(1)[:, 0].tolist() == [float(v) for v in metadata["value"]]

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.test_batches[dataloader_idx] += 1

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


# ---- a real Trainer -------------------------------------------------------------------------


@pytest.mark.slow
# Lightning 2.6's CombinedLoader builds a torch LeafSpec, which torch 2.14 deprecates.
@pytest.mark.parametrize(
    ("tier", "parallel"), [*[(tier, -1) for tier in TIERS], ("memory", 2), ("disk", 2)]
)
def test_trainer_fits_and_tests_with_every_tier(
    cache_dir: Path, decode_log: Path, tier: str, parallel: int
) -> None:
    split = make_split(FULL)
    dm = datamodule(
        cache_dir, split, ValueLoader(decode_log), tier, batch_size=2, parallel=parallel
    )
    model = TinyModel()
    trainer = quiet_trainer(max_epochs=2, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)

    # Every training epoch is a permutation of the train subset, in batches of two.
    assert [sorted(epoch) for epoch in model.train_values] == [list(range(6))] * 2
    # dataloader_idx 0 is "validation", 1 is "monitor-train", both unshuffled, per epoch.
    assert model.val_batches == {0: 2 * 2, 1: 2 * 3}
    assert model.val_values == {0: [100, 101, 102, 103] * 2, 1: list(range(200, 206)) * 2}
    assert model.test_batches == {0: 2}
    counts = decodes_by_value(decode_log)
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
def test_prepare_data_sets_no_state(cache_dir: Path, decode_log: Path, tier: str) -> None:
    split = make_split(FULL)
    dm = datamodule(cache_dir, split, ValueLoader(decode_log), tier)
    before = {name: (value, repr(value)) for name, value in vars(dm).items()}
    dm.prepare_data()
    after = {name: (value, repr(value)) for name, value in vars(dm).items()}
    assert after.keys() == before.keys()
    assert [
        n for n in after if after[n][0] is not before[n][0] or after[n][1] != before[n][1]
    ] == []
    if tier == "disk":
        # Only the caches on disk change: one per subset, every item decoded once.
        assert published_subsets(cache_dir) == sorted(split)
        assert sorted(decodes_by_value(decode_log).values()) == [1] * sum(FULL.values())
    else:
        assert decoded_items(decode_log) == []
        assert published_subsets(cache_dir) == []


def _running_trainer(world_size: int) -> Any:
    """What the DataModule reads of a running Lightning trainer (a real one needs a job)."""
    return SimpleNamespace(
        world_size=world_size, state=SimpleNamespace(status=TrainerStatus.RUNNING)
    )


def test_prepare_data_of_a_multi_rank_job_leaves_the_build_to_setup(
    cache_dir: Path, decode_log: Path
) -> None:
    dm = datamodule(cache_dir, make_split(FULL), ValueLoader(decode_log), "disk")
    dm.trainer = _running_trainer(4)
    dm.prepare_data()  # on local rank 0 of a node: the other ranks build with it in setup
    assert (decoded_items(decode_log), published_subsets(cache_dir)) == ([], [])
    # Without a process group, the ranks cannot meet: each builds alone, under the lock.
    dm.setup("fit")
    assert sorted(decodes_by_value(decode_log).values()) == [1] * 16
    assert published_subsets(cache_dir) == ["monitor-train", "train", "validation"]
    dm.trainer = _running_trainer(1)
    dm.prepare_data()  # a one-rank job builds here, as without a trainer
    assert published_subsets(cache_dir) == sorted(FULL)


@pytest.mark.parametrize("tier", ["memory", "disk"])
def test_setup_fit_opens_only_train_validation_and_monitors(
    cache_dir: Path, decode_log: Path, tier: str
) -> None:
    dm = datamodule(cache_dir, make_split(FULL), ValueLoader(decode_log), tier)
    dm.setup("fit")
    assert {name.rsplit("/", 1)[0] for name, *_ in decoded_items(decode_log)} == {
        "train",
        "validation",
        "monitor-train",
    }
    if tier == "disk":
        assert published_subsets(cache_dir) == ["monitor-train", "train", "validation"]
    assert set(dm.val_dataloader()) == {"validation", "monitor-train"}
    with pytest.raises(ConfigurationError, match=r"subset 'test' is not set up"):
        dm.test_dataloader()


@pytest.mark.parametrize(
    ("stage", "opened"),
    [("validate", {"validation", "monitor-train"}), ("test", {"test"}), ("predict", {"test"})],
)
def test_setup_opens_what_the_stage_needs(
    cache_dir: Path, decode_log: Path, stage: str, opened: set[str]
) -> None:
    dm = datamodule(cache_dir, make_split(FULL), ValueLoader(decode_log), "memory")
    dm.setup(stage)
    assert {name.rsplit("/", 1)[0] for name, *_ in decoded_items(decode_log)} == opened
    with pytest.raises(ConfigurationError, match=r"subset 'train' is not set up"):
        dm.train_dataloader()


@pytest.mark.parametrize("tier", TIERS)
def test_teardown_releases_the_stage_datasets(cache_dir: Path, decode_log: Path, tier: str) -> None:
    dm = datamodule(cache_dir, make_split(FULL), ValueLoader(decode_log), tier, batch_size=3)
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


def test_unknown_stage_is_a_configuration_error(cache_dir: Path, decode_log: Path) -> None:
    dm = datamodule(cache_dir, make_split(FULL), ValueLoader(decode_log), "none")
    with pytest.raises(ConfigurationError, match=r"stage 'train' is not one of fit, validate"):
        dm.setup("train")


@pytest.mark.parametrize("tier", TIERS)
def test_missing_subset_is_a_split_error(cache_dir: Path, decode_log: Path, tier: str) -> None:
    dm = datamodule(
        cache_dir, make_split({"train": 2, "validation": 2}), ValueLoader(decode_log), tier
    )
    with pytest.raises(
        SplitError, match=r"setup\('test'\) needs subset 'test'; database_split has 'train', "
    ):
        dm.setup("test")
    no_train = datamodule(cache_dir, make_split({"validation": 2}), ValueLoader(decode_log), tier)
    with pytest.raises(SplitError, match=r"setup\('fit'\) needs subset 'train'"):
        no_train.setup("fit")


@pytest.mark.parametrize("tier", TIERS)
def test_empty_subset_is_a_split_error(cache_dir: Path, decode_log: Path, tier: str) -> None:
    split = make_split({"train": 3, "validation": 0})
    dm = datamodule(cache_dir, split, ValueLoader(decode_log), tier)
    with pytest.raises(SplitError, match=r"subset 'validation' of database_split is empty"):
        dm.setup("fit")


# ---- cache tiers and their decodes ----------------------------------------------------------


def test_cache_samples_means_memory_and_cache_wins(tmp_path: Path, decode_log: Path) -> None:
    split = make_split({"train": 3})
    memory = CachingDataModule(split, ValueLoader(decode_log), True)  # mednet's positional flag
    assert memory.cache == "memory"
    memory.setup("fit")
    assert decode_count(decode_log) == 3  # loaded into RAM at setup
    none = CachingDataModule(split, ValueLoader(decode_log), cache_samples=True, cache="none")
    assert none.cache == "none"
    none.setup("fit")
    assert decode_count(decode_log) == 3  # the none tier decodes nothing at setup
    disk = CachingDataModule(split, ValueLoader(decode_log), True, cache="disk", cache_dir=tmp_path)
    assert disk.cache == "disk"
    assert CachingDataModule(split, ValueLoader(decode_log)).cache == "none"


def test_unknown_tier_lists_the_valid_ones(decode_log: Path) -> None:
    with pytest.raises(ConfigurationError) as caught:
        CachingDataModule(make_split({"train": 1}), ValueLoader(decode_log), cache="ram")  # type: ignore[arg-type]
    assert (
        str(caught.value) == "cache='ram' is not a cache tier; valid tiers are none, memory, disk"
    )


@pytest.mark.parametrize(
    "parallel", [-1, pytest.param(2, marks=pytest.mark.slow)], ids=["in-process", "workers"]
)
def test_memory_tier_decodes_each_item_once(
    cache_dir: Path, decode_log: Path, parallel: int
) -> None:
    split = make_split({"train": 6, "validation": 3, "test": 2})
    dm = datamodule(
        cache_dir, split, ValueLoader(decode_log), "memory", batch_size=2, parallel=parallel
    )
    dm.setup("fit")
    for _ in range(3):
        assert sorted(values(dm.train_dataloader())) == list(range(6))
        assert values(dm.val_dataloader()["validation"]) == [100, 101, 102]
    assert values(dm.unshuffled_train_dataloader()) == list(range(6))
    assert decodes_by_value(decode_log) == {v: 1 for *_, v in split["train"] + split["validation"]}


@pytest.mark.parametrize(
    "parallel", [-1, pytest.param(2, marks=pytest.mark.slow)], ids=["in-process", "workers"]
)
def test_none_tier_decodes_on_every_access(
    cache_dir: Path, decode_log: Path, parallel: int
) -> None:
    split = make_split({"train": 4, "validation": 2})
    dm = datamodule(
        cache_dir, split, ValueLoader(decode_log), "none", batch_size=2, parallel=parallel
    )
    dm.setup("fit")
    assert decoded_items(decode_log) == []
    train = dm.train_dataloader()
    for epoch in range(1, 3):
        assert sorted(values(train)) == [0, 1, 2, 3]
        assert decodes_by_value(decode_log) == {0: epoch, 1: epoch, 2: epoch, 3: epoch}
    del train  # stops persistent workers


@pytest.mark.parametrize(
    ("tier", "parallel"),
    [
        *[(tier, -1) for tier in TIERS],
        *[pytest.param(tier, 2, marks=pytest.mark.slow) for tier in TIERS],
    ],
)
def test_in_place_transform_never_reaches_the_cache(
    cache_dir: Path, decode_log: Path, tier: str, parallel: int
) -> None:
    split = make_split({"train": 4, "validation": 2})
    dm = datamodule(
        cache_dir,
        split,
        ValueLoader(decode_log),
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


def test_batch_chunk_count_serves_chunks(cache_dir: Path, decode_log: Path) -> None:
    dm = datamodule(
        cache_dir,
        make_split({"train": 8, "validation": 4, "test": 2}),
        ValueLoader(decode_log),
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
def test_batch_chunk_count_must_divide_batch_size(
    decode_log: Path, batch_size: int, chunks: int
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        CachingDataModule(
            make_split({"train": 8}),
            ValueLoader(decode_log),
            batch_size=batch_size,
            batch_chunk_count=chunks,
        )
    assert isinstance(caught.value, ValueError)
    message = str(caught.value)
    assert f"batch_size={batch_size}" in message
    assert f"batch_chunk_count={chunks}" in message


@pytest.mark.parametrize("batch_size", [0, -2, 1.5, True])
def test_batch_size_must_be_a_positive_int(decode_log: Path, batch_size: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"batch_size=.* must be a positive int"):
        CachingDataModule(make_split({"train": 2}), ValueLoader(decode_log), batch_size=batch_size)


@pytest.mark.parametrize("drop", [True, False])
def test_drop_incomplete_batch_drops_the_last_train_batch_only(
    cache_dir: Path, decode_log: Path, drop: bool
) -> None:
    split = make_split({"train": 5, "validation": 5})
    dm = datamodule(
        cache_dir,
        split,
        ValueLoader(decode_log),
        "memory",
        batch_size=2,
        drop_incomplete_batch=drop,
    )
    dm.setup("fit")
    assert batch_sizes(dm.train_dataloader()) == ([2, 2] if drop else [2, 2, 1])
    assert batch_sizes(dm.unshuffled_train_dataloader()) == [2, 2, 1]
    assert batch_sizes(dm.val_dataloader()["validation"]) == [2, 2, 1]
    balanced = datamodule(
        cache_dir,
        split,
        ValueLoader(decode_log),
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
    cache_dir: Path, decode_log: Path, parallel: int, workers: int
) -> None:
    dm = datamodule(
        cache_dir,
        make_split(FULL),
        ValueLoader(decode_log),
        "none",
        parallel=parallel,
        batch_size=2,
    )
    dm.setup("fit")
    dm.setup("test")
    loaders = [dm.train_dataloader(), dm.unshuffled_train_dataloader()]
    loaders += [*dm.val_dataloader().values(), *dm.test_dataloader().values()]
    assert [loader.num_workers for loader in loaders] == [workers] * 5
    assert [loader.persistent_workers for loader in loaders] == [workers > 0] * 5
    assert [loader.pin_memory for loader in loaders] == [torch.cuda.is_available()] * 5


@pytest.mark.parametrize("parallel", ["2", 1.5, True, None])
def test_parallel_must_be_an_int(decode_log: Path, parallel: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"parallel=.*: expected an int"):
        CachingDataModule(make_split({"train": 2}), ValueLoader(decode_log), parallel=parallel)


@pytest.mark.slow
@pytest.mark.parametrize("tier", TIERS)
def test_worker_processes_serve_the_right_samples(
    cache_dir: Path, decode_log: Path, tier: str
) -> None:
    split = make_split({"train": 7, "validation": 5, "monitor-train": 3})
    dm = datamodule(cache_dir, split, ValueLoader(decode_log), tier, batch_size=2, parallel=2)
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
    cache_dir: Path, decode_log: Path, tier: str
) -> None:
    labels = [0] * 9 + [1]
    split = make_split({"train": 10}, labels={"train": labels})
    dm = datamodule(
        cache_dir, split, ValueLoader(decode_log), tier, balance_sampler_by_class=True, batch_size=5
    )
    dm.setup("fit")
    decodes_at_setup = decode_count(decode_log)
    loader = dm.train_dataloader()
    # Building the sampler reads loader.label(item) (or labels kept at load): no decode.
    assert decode_count(decode_log) == decodes_at_setup == (0 if tier == "none" else 10)
    sampler = loader.sampler
    assert isinstance(sampler, WeightedRandomSampler)
    assert sampler.replacement
    assert sampler.num_samples == 10
    expected = [Fraction(1, 18)] * 9 + [Fraction(1, 2)]
    assert sampler.weights.tolist() == pytest.approx([float(w) for w in expected])
    assert sum(batch_sizes(loader)) == 10  # as many draws as samples


def test_balanced_sampling_needs_integer_labels(cache_dir: Path, decode_log: Path) -> None:
    # The samples' metadata carries integer labels; label(item) does not: it decides.
    dm = datamodule(
        cache_dir,
        make_split({"train": 4}),
        TextLabelLoader(decode_log),
        "none",
        balance_sampler_by_class=True,
    )
    dm.setup("fit")
    with pytest.raises(ConfigurationError, match=r"needs integer labels: raw_data_loader.label"):
        dm.train_dataloader()
    assert decoded_items(decode_log) == []


# ---- bad samples ---------------------------------------------------------------------------

BAD_KINDS = {
    "list": (
        "raw_data_loader.sample() returned a list of length 3, expected a (Tensor, dict) pair "
        "or a dict"
    ),
    "tensor": "raw_data_loader.sample() returned list as the sample, expected a torch.Tensor",
    "metadata": "raw_data_loader.sample() returned list as metadata, expected a dict",
}


def bad_third_sample(cache_dir: Path, log: Path, kind: str, **options: Any) -> CachingDataModule:
    """Four train items, batches of one, ``train[2]`` an unusable sample of ``kind``."""
    loader = BadValueLoader(log, kind, bad=[2])
    return datamodule(cache_dir, make_split({"train": 4}), loader, "none", batch_size=1, **options)


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_sample_names_subset_index_and_item(
    cache_dir: Path, decode_log: Path, kind: str
) -> None:
    dm = bad_third_sample(cache_dir, decode_log, kind)
    dm.setup("fit")
    with pytest.raises(SampleError) as caught:
        list(dm.unshuffled_train_dataloader())
    assert str(caught.value) == f"train[2] (['train/2', 0, 2]): {BAD_KINDS[kind]}"
    error = caught.value
    assert (error.subset, error.index, error.item) == ("train", 2, ["train/2", 0, 2])
    assert isinstance(error, TypeError)


@pytest.mark.slow
@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_sample_in_a_worker_keeps_its_type(
    cache_dir: Path, decode_log: Path, kind: str
) -> None:
    dm = bad_third_sample(cache_dir, decode_log, kind, parallel=2)
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
def test_load_reports_every_bad_sample(
    cache_dir: Path, decode_log: Path, tier: str, parallel: int
) -> None:
    loader = BadValueLoader(decode_log, "metadata", bad=[1, 3])
    dm = datamodule(cache_dir, make_split({"train": 5}), loader, tier, parallel=parallel)
    with pytest.raises(BadSamplesError) as caught:
        dm.setup("fit")
    message = str(caught.value)
    assert message.startswith("2 of 5 items of subset 'train' could not be decoded:\n")
    assert f"train[1] (['train/1', 1, 1]): {BAD_KINDS['metadata']}" in message
    assert f"train[3] (['train/3', 1, 3]): {BAD_KINDS['metadata']}" in message
    assert len(caught.value.failures) == 2
    # Every item was decoded once: the report covers all failures in one go.
    assert decodes_by_value(decode_log) == Counter({0: 1, 1: 1, 2: 1, 3: 1, 4: 1})
