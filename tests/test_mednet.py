"""shardcache.mednet: mednet 2.1's data module on our tiers, batch for batch like mednet's own.

mednet's own tests run against it in `test_mednet_suite`; these check what the issue asks
beyond them: bit-identical batches and shuffled order against mednet's own data module,
the cache key's model transforms, decodes on a second run, and mednet's attribute semantics.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning
import pytest
import torch
from mednet.data.datamodule import CachingDataModule as MednetCachingDataModule
from mednet.data.datamodule import ConcatDataModule as MednetConcatDataModule
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler
from torchvision.transforms import v2

from shardcache.core.narrow import Narrow
from shardcache.mednet import CachingDataModule, ConcatDataModule, TierConcatDataset
from shardcache.serving.collate import BatchCollator
from shardcache.serving.lookahead import LookaheadBatches, LookaheadLoader
from shardcache.store.reader import CacheDataset
from support.decodes import decode_count
from support.mednet_loaders import PngLoader, write_pngs
from support.samples import sample_differences

TIERS = ("none", "memory", "disk")


@pytest.fixture(scope="module")
def pngs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[Any]]]:
    root = tmp_path_factory.mktemp("pngs")
    items = write_pngs(root, 20, side=40)  # a 32 x 32 crop is large enough to store narrow
    return root, {"train": items[:10], "validation": items[10:15], "test": items[15:]}


def _build(cls: type, pngs: Any, log: Path, **options: Any) -> Any:
    root, split = pngs
    module = cls(
        split,
        PngLoader(root, log),
        database_name="pngs",
        split_name="default",
        task="classification",
        num_classes=1,
        batch_size=4,
        **options,
    )
    module.model_transforms = [v2.Resize((16, 16), antialias=True)]
    return module


def _batches(module: Any) -> dict[str, list[Any]]:
    module.prepare_data()
    module.setup("predict")  # every subset, as mednet's predict does
    loaders = {"unshuffled train": module.unshuffled_train_dataloader()}
    loaders |= {f"validation {k}": v for k, v in module.val_dataloader().items()}
    loaders |= {f"test {k}": v for k, v in module.test_dataloader().items()}
    loaders |= {f"predict {k}": v for k, v in module.predict_dataloader().items()}
    batches = {name: list(loader) for name, loader in loaders.items()}
    lightning.seed_everything(7, verbose=False)
    batches["shuffled train"] = list(module.train_dataloader())
    return batches


@pytest.mark.parametrize("tier", TIERS)
def test_batches_and_shuffled_order_equal_mednets_own(pngs: Any, tmp_path: Path, tier: str) -> None:
    theirs = _batches(_build(MednetCachingDataModule, pngs, tmp_path / "theirs.log"))
    ours_module = _build(
        CachingDataModule, pngs, tmp_path / "ours.log", cache=tier, cache_dir=tmp_path
    )
    ours = _batches(ours_module)
    assert list(ours) == list(theirs)
    for name in theirs:
        assert sample_differences(theirs[name], ours[name], name) == []
    expected_targets = [torch.FloatTensor([label]) for _, label in pngs[1]["train"]]
    targets = ours_module.unshuffled_train_dataloader().dataset.targets()
    assert sample_differences(expected_targets, targets) == []
    assert isinstance(ours_module, MednetConcatDataModule)


def test_a_second_disk_run_decodes_nothing_and_a_changed_transform_is_a_new_cache(
    pngs: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = _build(
        CachingDataModule, pngs, tmp_path / "first.log", cache="disk", cache_dir=tmp_path
    )
    _batches(first)
    assert decode_count(tmp_path / "first.log") == 20
    second = _build(
        CachingDataModule, pngs, tmp_path / "second.log", cache="disk", cache_dir=tmp_path
    )
    _batches(second)
    assert decode_count(tmp_path / "second.log") == 0
    third = _build(
        CachingDataModule, pngs, tmp_path / "third.log", cache="disk", cache_dir=tmp_path
    )
    third.model_transforms = [v2.Resize((12, 12), antialias=True)]
    with caplog.at_level(logging.INFO, logger="shardcache"):
        _batches(third)
    assert decode_count(tmp_path / "third.log") == 20
    misses = [r.getMessage() for r in caplog.records if r.getMessage().startswith("no cache for")]
    assert any("transform" in message for message in misses), misses


def test_an_explicit_cache_wins_over_cache_samples_assigned_later(
    pngs: Any, tmp_path: Path
) -> None:
    module = _build(CachingDataModule, pngs, tmp_path / "d.log", cache="disk", cache_dir=tmp_path)
    module.cache_samples = False  # as `mednet train` always does
    assert module.tier_name() == "disk"
    default = _build(CachingDataModule, pngs, tmp_path / "e.log")
    assert default.tier_name() == "none"
    default.cache_samples = True
    assert default.tier_name() == "memory"


def test_mednet_stage_semantics_are_kept(
    pngs: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, split = pngs
    no_validation = {"train": split["train"], "test": split["test"]}
    module = _build(
        CachingDataModule,
        (root, no_validation),
        tmp_path / "s.log",
        cache="disk",
        cache_dir=tmp_path,
    )
    with caplog.at_level(logging.INFO, logger="mednet"):
        module.setup("fit")
        module.setup("fit")
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("mednet")]
    assert "Dataset `train` is already setup. Not re-instantiating it." in lines
    assert any(line.startswith("Loading dataset:`train` from the disk cache") for line in lines)
    assert list(module.val_dataloader()) == ["train"]  # validation falls back to train
    module.teardown("fit")
    assert set(module._datasets) == {"train"}  # mednet's teardown keeps them
    module.setup("predict")
    assert list(module.predict_dataloader()) == ["train", "test"]


def _concat(cls: type, pngs: Any, log: Path, **options: Any) -> Any:
    """A data module whose every subset is two parts (as from two databases), cropped exactly."""
    root, split = pngs
    loader = PngLoader(root, log)
    splits = {name: [(items[:3], loader), (items[3:], loader)] for name, items in split.items()}
    module = cls(
        splits,
        database_name="pngs",
        split_name="default",
        task="classification",
        num_classes=1,
        batch_size=4,
        **options,
    )
    module.model_transforms = [v2.CenterCrop(32)]  # keeps k/255 values: stored narrow
    return module


def record_hints(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """`CacheDataset.will_need` replaced: the names of the samples hinted, per call."""
    calls: list[list[str]] = []

    def will_need(dataset: CacheDataset, indices: Any) -> None:
        calls.append([dataset[index]["name"] for index in indices])

    monkeypatch.setattr(CacheDataset, "will_need", will_need)
    return calls


def test_a_concatenated_subset_serves_mednets_batches_and_hints_each_part_ahead(
    pngs: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    theirs = _batches(_concat(MednetConcatDataModule, pngs, tmp_path / "theirs.log"))
    module = _concat(
        ConcatDataModule, pngs, tmp_path / "ours.log", cache="disk", cache_dir=tmp_path
    )
    ours = _batches(module)
    assert list(ours) == list(theirs)
    for name in theirs:
        assert sample_differences(theirs[name], ours[name], name) == []

    train = module._datasets["train"]
    assert isinstance(train, TierConcatDataset)
    batch = train.__getitems__([0, 4, 1])  # parts 0, 1, 0: fetched per part, served in order
    assert [sample["name"] for sample in batch] == [train[i]["name"] for i in (0, 4, 1)]
    assert all(isinstance(sample["image"], Narrow) for sample in batch)  # widened by the collator

    hints = record_hints(monkeypatch)
    loader = module.train_dataloader()
    assert type(loader) is LookaheadLoader
    assert isinstance(loader.collate_fn, BatchCollator)
    served = [batch["name"] for batch in loader]
    first_part = {name for name, _ in pngs[1]["train"][:3]}

    def by_part(names: list[str]) -> list[str]:  # parts in the order they first appear
        lead = names[0] in first_part
        return [n for n in names if (n in first_part) == lead] + [
            n for n in names if (n in first_part) != lead
        ]

    expected = [name for names in served[1:] for name in by_part(names)]  # the first: its reader's
    assert [name for call in hints for name in call] == expected
    assert all(set(call) <= first_part or not set(call) & first_part for call in hints)

    hints.clear()
    assert train.will_need is not None
    train.will_need([0, 10**6])  # a hint never raises: the read reports a bad index
    assert hints == []
    with pytest.raises(IndexError):
        train.__getitems__([0, 10**6])


def test_only_the_disk_tier_hints_mednets_loaders(pngs: Any, tmp_path: Path) -> None:
    # `with_lookahead` swaps the class of a built loader: LookaheadLoader must add no state.
    assert not {"__init__", "__slots__"} & set(vars(LookaheadLoader))
    for tier, hinted in (("none", False), ("memory", False), ("disk", True)):
        for build in (_build, _concat):
            module = build(
                CachingDataModule if build is _build else ConcatDataModule,
                pngs,
                tmp_path / f"{tier}.log",
                cache=tier,
                cache_dir=tmp_path,
            )
            module.prepare_data()
            module.setup("fit")
            loader = module.train_dataloader()
            assert (type(loader) is LookaheadLoader) is hinted, (tier, build.__name__)
            assert type(loader) in (DataLoader, LookaheadLoader)


def test_lightning_recreates_a_mednet_disk_loader_for_a_rank_as_a_lookahead_loader(
    pngs: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What Lightning's trainer does with a train loader under DDP: it asks the data module
    # for it with DataLoader's arguments recorded (`_request_dataloader`), then re-creates it
    # from its class with a DistributedSampler (`_update_dataloader`).
    from lightning.fabric.utilities.data import _replace_dunder_methods
    from lightning.pytorch.trainer.states import RunningStage
    from lightning.pytorch.utilities.data import _update_dataloader

    module = _build(CachingDataModule, pngs, tmp_path / "r.log", cache="disk", cache_dir=tmp_path)
    module.prepare_data()
    module.setup("fit")
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        loader = module.train_dataloader()
    rank = DistributedSampler(loader.dataset, num_replicas=2, rank=1, shuffle=True, seed=3)
    recreated = _update_dataloader(loader, rank, mode=RunningStage.TRAINING)

    assert type(recreated) is LookaheadLoader
    assert isinstance(recreated.collate_fn, BatchCollator)
    hints = record_hints(monkeypatch)
    index_sampler = recreated._index_sampler
    assert isinstance(index_sampler, LookaheadBatches)
    assert index_sampler.batches.sampler is rank
    served = [batch["name"] for batch in recreated]
    names = [module._datasets["train"][index]["name"] for index in rank]
    assert [name for batch in served for name in batch] == names  # this rank's half
    assert hints == served[1:]


@pytest.mark.slow
def test_spawned_workers_serve_the_disk_tier(pngs: Any, tmp_path: Path) -> None:
    module = _build(CachingDataModule, pngs, tmp_path / "w.log", cache="disk", cache_dir=tmp_path)
    expected = _batches(_build(MednetCachingDataModule, pngs, tmp_path / "m.log"))
    module.parallel = 1  # mednet: one persistent worker, started with spawn
    module.setup("fit")
    loader = module.unshuffled_train_dataloader()
    assert loader.multiprocessing_context is not None
    assert sample_differences(expected["unshuffled train"], list(loader)) == []


def test_importing_without_mednet_names_the_extra() -> None:
    code = "import sys; sys.modules['mednet'] = None\nimport shardcache.mednet"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 1
    assert "shardcache.mednet needs mednet 2.1: pip install 'shardcache[mednet]'" in result.stderr
