"""Exact narrow storage: 8/16-bit data loaded as floats is stored as integers, served bit-exact.

A float tensor is stored as uint8/uint16 only when widening gives back every bit; served
samples and batches are bit-identical to the ``none`` tier whatever the data (8-bit divided
or multiplied, 16-bit, or inexact floats after an antialiased resize), and ``widen="device"``
serves the narrow bytes to the accelerator and widens them there.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate
from torchvision.transforms.v2 import functional as tvf

from shardcache import CachingDataModule
from shardcache.core.narrow import NarrowBatch, Widening, widen_into
from shardcache.loaders import ImageFileLoader
from shardcache.store import CacheDataset
from shardcache.store.codec import narrow
from support.trainers import quiet_trainer

SIDE = 40


def _pixels(index: int, high: int, dtype: torch.dtype) -> torch.Tensor:
    generator = torch.Generator().manual_seed(index)
    return torch.randint(0, high + 1, (1, SIDE, SIDE), generator=generator, dtype=torch.int64).to(
        dtype
    )


class ScaledLoader:
    """Image data as loaders produce it: ``kind`` says how the integers became floats."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def sample(self, item: list[Any]) -> dict[str, Any]:
        index = item[1]
        if self.kind == "u8-div":  # ImageFileLoader, x / 255
            image = _pixels(index, 255, torch.uint8).to(torch.float32).div_(255)
        elif self.kind == "u8-mul":  # torchvision's to_dtype(scale=True): x * (1 / 255)
            image = tvf.to_dtype(_pixels(index, 255, torch.uint8), torch.float32, scale=True)
        elif self.kind == "u16":
            image = _pixels(index, 65535, torch.int32).to(torch.float32).div_(65535)
        else:  # "resized": antialiasing makes values that are no k / 255
            image = tvf.resize(_pixels(index, 255, torch.uint8).float() / 255, [31, 29])
        return {"image": image, "name": item[0], "target": torch.tensor([index % 2.0])}

    def label(self, item: list[Any]) -> int:
        return item[1] % 2


KINDS = ("u8-div", "u8-mul", "u16", "resized")
SPLIT = {"train": [[f"s{i}", i] for i in range(12)], "validation": [["v", 99]]}


def _datamodule(kind: str, tier: str, cache_dir: Path, **options: Any) -> CachingDataModule:
    datamodule = CachingDataModule(
        SPLIT, ScaledLoader(kind), batch_size=4, cache=tier, cache_dir=cache_dir, **options
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def _bits(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().view(torch.uint8).numpy().tobytes()


def _same(left: Any, right: Any) -> bool:
    if isinstance(left, torch.Tensor):
        return (
            type(left) is type(right) and left.dtype == right.dtype and _bits(left) == _bits(right)
        )
    if isinstance(left, dict):
        return list(left) == list(right) and all(_same(left[k], right[k]) for k in left)
    if isinstance(left, list):
        return len(left) == len(right) and all(map(_same, left, right))
    return bool(left == right)


@pytest.mark.parametrize("parallel", [-1, pytest.param(2, marks=pytest.mark.slow)])
@pytest.mark.parametrize("kind", KINDS)
def test_samples_and_batches_are_bit_identical_to_the_none_tier(
    tmp_path: Path, kind: str, parallel: int
) -> None:
    raw = [ScaledLoader(kind).sample(item) for item in SPLIT["train"]]
    expected_batches = [default_collate(raw[i : i + 4]) for i in range(0, 12, 4)]
    for run in ("build", "found"):
        disk = _datamodule(kind, "disk", tmp_path, parallel=parallel)
        dataset = disk.unshuffled_train_dataloader().dataset
        assert all(_same(raw[i], dataset[i]) for i in range(12)), run
        batches = list(disk.unshuffled_train_dataloader())
        assert all(map(_same, expected_batches, batches)), run
        disk.teardown("fit")


@pytest.mark.parametrize("kind", KINDS)
def test_only_exact_data_is_stored_narrow(tmp_path: Path, kind: str) -> None:
    disk = _datamodule(kind, "disk", tmp_path)
    cache = disk.unshuffled_train_dataloader().dataset.dataset
    assert isinstance(cache, CacheDataset)
    storage = cache.manifest.storage
    if kind == "resized":
        assert storage["narrow_tensors"] == 0
        assert storage["stored_bytes"] == storage["served_bytes"]
        return
    assert storage["narrow_tensors"] == 12  # every image; the 1-element targets stay float
    image_bytes = 12 * SIDE * SIDE * 4
    stored_images = image_bytes // (2 if kind == "u16" else 4)
    assert storage["stored_bytes"] == storage["served_bytes"] - image_bytes + stored_images
    # The cache on disk holds the narrow bytes: <= 0.3x of float32 images for 8-bit data.
    if kind.startswith("u8"):
        shards = sum(shard.bytes for shard in cache.manifest.shards)
        assert shards <= 0.3 * image_bytes + (16 << 10)


def test_the_build_log_and_info_say_what_was_narrowed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    from shardcache.cli import main

    with caplog.at_level(logging.INFO, logger="shardcache"):
        _datamodule("u8-div", "disk", tmp_path)
    published = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("published train")
    ]
    assert len(published) == 1
    assert "12 of 24 tensors stored narrow, exactly" in published[0]
    assert main(["info", "train", "--cache-dir", str(tmp_path), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["storage"]["narrow_tensors"] == 12
    assert document["shard_options"]["narrowing"] is True


def test_widening_is_exact_for_every_stored_value() -> None:
    for stored, scale, dtype in (("U8", 255, torch.uint8), ("U16", 65535, torch.uint16)):
        integers = torch.arange(scale + 1).to(dtype)
        as_float = integers.to(torch.int64).to(torch.float32)
        for op, reference in (("div", as_float / scale), ("mul", as_float * (1.0 / scale))):
            widening = Widening(stored, "F32", scale, op)  # type: ignore[arg-type]
            out = torch.empty(scale + 1)
            widen_into(integers, widening, out)
            assert _bits(out) == _bits(reference), (stored, op)
            assert _bits(widening.table()) == _bits(reference), (stored, op)


def test_inexact_or_special_values_are_never_narrowed() -> None:
    exact = torch.arange(2048, dtype=torch.float32).remainder(256).div(255)
    assert narrow(exact) is not None
    for problem in (-0.0, float("nan"), 1e-45, 0.5, -1 / 255):
        spoiled = exact.clone()
        spoiled[1500] = problem
        assert narrow(spoiled) is None, problem


class _Recorder(lightning.LightningModule):
    """Records what each training batch holds when the model sees it."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.images: list[torch.Tensor] = []

    def training_step(self, batch: dict[str, Any], batch_index: int) -> torch.Tensor:
        self.images.append(batch["image"].clone())
        return self.layer(batch["image"].mean(dim=(1, 2, 3))[:, None]).sum()

    def validation_step(self, batch: dict[str, Any], batch_index: int) -> None:
        assert batch["image"].dtype == torch.float32

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _fit(datamodule: CachingDataModule) -> list[torch.Tensor]:
    """The training batches' images as a model sees them, in one seeded epoch."""
    model = _Recorder()
    trainer = quiet_trainer(max_epochs=1)
    torch.manual_seed(0)
    trainer.fit(model, datamodule=datamodule)
    return model.images


@pytest.mark.parametrize("kind", ["u8-div", "u16", "resized"])
def test_widen_on_the_device_serves_narrow_batches_and_widens_after_the_transfer(
    tmp_path: Path, kind: str
) -> None:
    datamodule = _datamodule(kind, "disk", tmp_path, widen="device")
    batch = next(iter(datamodule.unshuffled_train_dataloader()))
    raw = default_collate([ScaledLoader(kind).sample(item) for item in SPLIT["train"][:4]])
    if kind == "resized":  # nothing narrow: an ordinary float batch
        assert _same(raw, batch)
    else:
        assert isinstance(batch["image"], NarrowBatch)
        assert batch["image"].data.dtype == (torch.uint8 if kind == "u8-div" else torch.uint16)
        moved = batch["image"].to("cpu")  # what Lightning does with any object that has .to
        assert isinstance(moved, NarrowBatch)
        assert _same(raw, datamodule.on_after_batch_transfer(batch, 0))
    # A real Trainer: the model sees float batches equal to the host-widened ones.
    on_device = _fit(_datamodule(kind, "disk", tmp_path, widen="device"))
    on_host = _fit(_datamodule(kind, "disk", tmp_path))
    assert len(on_device) == len(on_host) == 3
    assert all(_bits(a) == _bits(b) for a, b in zip(on_device, on_host, strict=True))


def test_image_file_loader_serves_integers_or_floats_scaled_by_bit_depth(tmp_path: Path) -> None:
    eight = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    sixteen = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000
    Image.fromarray(eight).save(tmp_path / "8.png")
    Image.fromarray(sixteen).save(tmp_path / "16.png")
    as_uint8, _ = ImageFileLoader(tmp_path, dtype=torch.uint8).sample(["8.png", 0])
    assert as_uint8.dtype == torch.uint8
    assert torch.equal(as_uint8[0], torch.from_numpy(eight))
    unchanged = ImageFileLoader(tmp_path, mode="unchanged", dtype=torch.uint16)
    as_uint16, _ = unchanged.sample(["16.png", 0])
    assert torch.equal(as_uint16[0].to(torch.int32), torch.from_numpy(sixteen.astype(np.int32)))
    as_float, _ = ImageFileLoader(tmp_path, mode="unchanged").sample(["16.png", 0])
    assert _bits(as_float[0]) == _bits(torch.from_numpy(sixteen.astype(np.float32)) / 65535)
    with pytest.raises(ValueError, match=r"16.png decodes to torch.uint16, not dtype=torch.uint8"):
        ImageFileLoader(tmp_path, mode="unchanged", dtype=torch.uint8).sample(["16.png", 0])


def test_narrow_false_stores_floats_as_they_are_and_serves_the_same(tmp_path: Path) -> None:
    narrow = _datamodule("u8-div", "disk", tmp_path / "narrow")
    wide = _datamodule("u8-div", "disk", tmp_path / "wide", narrow=False)
    narrow_cache = narrow.unshuffled_train_dataloader().dataset.dataset
    wide_cache = wide.unshuffled_train_dataloader().dataset.dataset
    assert wide_cache.manifest.storage["narrow_tensors"] == 0
    assert wide_cache.manifest.shard_options["narrowing"] is False
    assert narrow_cache.manifest.storage["narrow_tensors"] == 12
    assert all(_same(narrow_cache[i], wide_cache[i]) for i in range(12))
    batches = zip(
        narrow.unshuffled_train_dataloader(), wide.unshuffled_train_dataloader(), strict=True
    )
    assert all(_same(a, b) for a, b in batches)
