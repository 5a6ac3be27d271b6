"""The sample model: pairs and dicts, tv_tensors, conversions and refusals, alike in every tier.

Every tier passes what a raw loader returns through one rule (`shardcache.core.samples`):
what it keeps, what it converts, what it refuses with a `SampleError` naming the subset,
index, item and field. These tests hold all three tiers to that rule, and check that a
zero-size tensor never takes its neighbour's data (issue 11, finding 1).
"""

from __future__ import annotations

import collections
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torchvision import tv_tensors

from shardcache import BadSamplesError, CachingDataModule, SampleError
from support.samples import sample_differences

TIERS = ("none", "memory", "disk")


def served(
    tier: str, split: dict[str, list[Any]], loader: Any, cache_dir: Path, **options: Any
) -> list[Any]:
    """Every training sample as the tier serves it, through a fresh DataModule."""
    datamodule = CachingDataModule(split, loader, cache=tier, cache_dir=cache_dir, **options)
    datamodule.prepare_data()
    datamodule.setup("fit")
    dataset = datamodule.unshuffled_train_dataloader().dataset
    samples = [dataset[index] for index in range(len(dataset))]
    datamodule.teardown("fit")
    return samples


# --- loaders (module level: DataLoader workers unpickle them) -------------------------------


class DictLoader:
    """mednet-like dict samples with every kind of tv_tensor, nested values and edge floats."""

    def sample(self, item: list[Any]) -> dict[str, Any]:
        name, index = item
        generator = torch.Generator().manual_seed(index)
        pixels = torch.randint(0, 256, (1, 6, 5), generator=generator, dtype=torch.uint8)
        return {
            "image": tv_tensors.Image(pixels.to(torch.float32).div_(255)),
            "target": torch.FloatTensor([index % 2]),
            "name": name,
            "mask": tv_tensors.Mask(torch.rand(6, 5, generator=generator) > 0.5),
            "boxes": tv_tensors.BoundingBoxes(
                torch.rand(index % 3, 4, generator=generator) * 5,
                format="CXCYWH",
                canvas_size=(6, 5),
                clamping_mode="hard" if index % 2 else None,
            ),
            "points": tv_tensors.KeyPoints(
                torch.rand(2, 2, generator=generator), canvas_size=(6, 5)
            ),
            "video": tv_tensors.Video(torch.zeros(2, 1, 2, 2)),
            "meta": {"scores": [torch.arange(index + 1), -0.0, math.nan], "flags": {"ok": True}},
        }

    def target(self, item: list[Any]) -> torch.Tensor:
        return torch.FloatTensor([item[1] % 2])


class ConvertingLoader:
    """Returns values every tier converts the same way."""

    def sample(self, item: list[Any]) -> Any:
        index = item[1]
        weight = torch.nn.Parameter(torch.full((2,), float(index)))
        graded = torch.ones(3, requires_grad=True) * index
        metadata = collections.OrderedDict(
            f64=np.float64(0.1 * index),
            f32=np.float32(0.5),
            i64=np.int64(index),
            flag=np.bool_(True),
            text=np.str_("x"),
            array=np.arange(3, dtype=np.int16),
            pair=(1, (2, "three")),
            weight=weight,
            graded=graded,
            conj=torch.tensor([1 + 2j], dtype=torch.complex64).conj(),
        )
        return torch.zeros(2), metadata

    def label(self, item: list[Any]) -> int:
        return item[1] % 2


CONVERTED = {
    "f64": float,
    "f32": float,
    "i64": int,
    "flag": bool,
    "text": str,
    "array": torch.Tensor,
    "pair": list,
    "weight": torch.Tensor,
    "graded": torch.Tensor,
    "conj": torch.Tensor,
}


class _Odd(torch.Tensor):
    """A tensor subclass that cannot be kept."""


def _bad_value(kind: str) -> Any:
    return {
        "meta-device tensor": lambda: torch.empty(2, device="meta"),
        "sparse tensor": lambda: torch.eye(2).to_sparse(),
        "nested tensor": lambda: torch.nested.nested_tensor(
            [torch.zeros(2), torch.zeros(3)], layout=torch.jagged
        ),
        "complex128 tensor": lambda: torch.zeros(2, dtype=torch.complex128),
        "tensor subclass": lambda: torch.zeros(2).as_subclass(_Odd),
        "set": lambda: {1, 2},
        "object": object,
        "int key": lambda: {1: "x"},
        "deep nesting": lambda: _deep(20),
    }[kind]()


def _deep(levels: int) -> Any:
    value: Any = 0
    for _ in range(levels):
        value = [value]
    return value


PROBLEMS = {
    "meta-device tensor": r"metadata field 'bad' is a tensor on device meta; return CPU tensors",
    "sparse tensor": r"metadata field 'bad' is a torch.sparse_coo tensor; samples hold dense",
    "nested tensor": r"metadata field 'bad' is a nested tensor; samples hold dense",
    "complex128 tensor": r"metadata field 'bad' is a torch.complex128 tensor; storable dtypes",
    "tensor subclass": r"metadata field 'bad' is a test_samples._Odd, a tensor subclass",
    "set": r"metadata field 'bad' cannot be stored: builtins.set is not a JSON value",
    "object": r"metadata field 'bad' cannot be stored: builtins.object is not a JSON value",
    "int key": r"metadata field 'bad' has the key 1, a int; keys must be strings",
    "deep nesting": r"metadata field 'bad'(\[0\])+ nests containers deeper than 16 levels",
}


class BadLoader:
    """Item 1 carries one value that no tier can serve."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def sample(self, item: list[Any]) -> Any:
        metadata: dict[str, Any] = {"index": item[1]}
        if item[1] == 1:
            metadata["bad"] = _bad_value(self.kind)
        return torch.zeros(2), metadata

    def label(self, item: list[Any]) -> int:
        return 0


class EmptyTensorLoader:
    """Detection-like: some images have no boxes (a [0, 4] tensor) next to ones that have."""

    def sample(self, item: list[Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        index = item[1]
        boxes = torch.zeros(0, 4) if index % 2 == 0 else torch.full((index, 4), float(index))
        return torch.full((3,), float(index)), {
            "boxes": boxes,
            "labels": torch.empty(0, dtype=torch.int64) if index % 2 == 0 else torch.arange(index),
            "empty_image": torch.zeros(0, 5, 5),
            "scalar": torch.tensor(float(index)),
        }

    def label(self, item: list[Any]) -> int:
        return item[1] % 2


def split_of(count: int) -> dict[str, list[Any]]:
    return {"train": [[f"s{index}", index] for index in range(count)]}


# --- every tier serves the same ---------------------------------------------------------------


@pytest.mark.parametrize("parallel", [-1, pytest.param(2, marks=pytest.mark.slow)])
def test_dict_samples_with_tv_tensors_are_served_alike_by_every_tier(
    tmp_path: Path, parallel: int
) -> None:
    split = split_of(6)
    expected = [DictLoader().sample(item) for item in split["train"]]
    for tier in TIERS:
        samples = served(tier, split, DictLoader(), tmp_path / "cache", parallel=parallel)
        assert sample_differences(expected, samples, tier) == []
    # A second run finds the cache and serves the same, classes and attributes included.
    again = served("disk", split, DictLoader(), tmp_path / "cache")
    assert sample_differences(expected, again, "disk, found") == []
    assert type(again[1]["boxes"]) is tv_tensors.BoundingBoxes
    assert again[1]["boxes"].format is tv_tensors.BoundingBoxFormat.CXCYWH
    assert again[1]["boxes"].canvas_size == (6, 5)


@pytest.mark.parametrize("tier", TIERS)
def test_conversions_are_one_rule_for_every_tier(tmp_path: Path, tier: str) -> None:
    samples = served(tier, split_of(3), ConvertingLoader(), tmp_path / "cache")
    _, metadata = samples[2]
    assert type(metadata) is dict
    assert {name: type(value) for name, value in metadata.items()} == CONVERTED
    assert (metadata["f64"], metadata["f32"], metadata["i64"]) == (np.float64(0.2), 0.5, 2)
    assert metadata["pair"] == [1, [2, "three"]]
    assert torch.equal(metadata["array"], torch.arange(3, dtype=torch.int16))
    assert not metadata["weight"].requires_grad
    assert not metadata["graded"].requires_grad
    assert torch.equal(metadata["graded"], torch.full((3,), 2.0))
    assert not metadata["conj"].is_conj()
    assert metadata["conj"].tolist() == [1 - 2j]


@pytest.mark.parametrize("kind", list(PROBLEMS))
@pytest.mark.parametrize("tier", TIERS)
def test_refused_values_name_the_subset_index_item_and_field(
    tmp_path: Path, tier: str, kind: str
) -> None:
    where = r"train\[1\] \(\['s1', 1\]\): "
    datamodule = CachingDataModule(split_of(3), BadLoader(kind), cache=tier, cache_dir=tmp_path)
    if tier == "none":
        datamodule.setup("fit")
        dataset = datamodule.unshuffled_train_dataloader().dataset
        with pytest.raises(SampleError, match=where + PROBLEMS[kind]):
            dataset[1]
        return
    with pytest.raises(
        BadSamplesError, match="1 of 3 items of subset 'train'[^\n]*\n  " + where + PROBLEMS[kind]
    ):
        datamodule.prepare_data() if tier == "disk" else datamodule.setup("fit")


@pytest.mark.parametrize("tier", TIERS)
def test_a_zero_size_tensor_never_takes_its_neighbours_data(tmp_path: Path, tier: str) -> None:
    split = split_of(8)
    expected = [EmptyTensorLoader().sample(item) for item in split["train"]]
    datamodule = CachingDataModule(split, EmptyTensorLoader(), cache=tier, cache_dir=tmp_path)
    datamodule.prepare_data()
    datamodule.setup("fit")
    batches = list(datamodule.unshuffled_train_dataloader())  # batch_size 1: ragged boxes
    for index, (tensor, metadata) in enumerate(batches):
        assert sample_differences(expected[index][0], tensor[0], f"[{index}]") == []
        for name in ("boxes", "labels", "empty_image", "scalar"):
            assert (
                sample_differences(expected[index][1][name], metadata[name][0], f"[{index}] {name}")
                == []
            )


class OneHotLoader:
    """mednet's multiclass targets: one-hot float vectors, and no ``label()``."""

    def sample(self, item: list[Any]) -> dict[str, Any]:
        return {"image": torch.zeros(2), "target": self.target(item)}

    def target(self, item: list[Any]) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.tensor(item[1] % 3), 3).float()


@pytest.mark.parametrize("tier", TIERS)
def test_labels_come_from_target_without_decoding(tmp_path: Path, tier: str) -> None:
    datamodule = CachingDataModule(
        split_of(9), OneHotLoader(), balance_sampler_by_class=True, cache=tier, cache_dir=tmp_path
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    assert datamodule.train_dataloader().dataset.labels() == [0, 1, 2] * 3
    assert datamodule.train_dataloader().sampler.weights.tolist() == [1 / 9] * 9


def test_set_chunk_size_is_the_seeds(tmp_path: Path) -> None:
    datamodule = CachingDataModule(split_of(8), DictLoader(), batch_size=8, cache_dir=tmp_path)
    datamodule.set_chunk_size(6, 3)
    assert (datamodule.batch_size, datamodule.batch_chunk_count) == (6, 3)
    datamodule.setup("fit")
    assert datamodule.train_dataloader().batch_size == 2
    with pytest.raises(
        ValueError, match=re.escape("batch_size=6 is not divisible by batch_chunk_count=4")
    ):
        datamodule.set_chunk_size(6, 4)


# --- property: random structures round-trip through every tier ------------------------------

DTYPES = [
    torch.bool,
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.complex64,
    torch.uint16,
]


@st.composite
def tensors(draw: Any) -> torch.Tensor:
    dtype = draw(st.sampled_from(DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))  # 0-d and zero-size included
    seed = draw(st.integers(0, 2**31))
    generator = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (int(np.prod(shape)) * 16,), generator=generator, dtype=torch.uint8)
    size = int(np.prod(shape)) * dtype.itemsize
    return raw[:size].view(dtype).reshape(shape).clone()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
values = st.recursive(
    json_values | tensors(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=12,
)
bulky = st.text(min_size=2000, max_size=3000)
samples = st.one_of(
    st.tuples(tensors(), st.dictionaries(st.text(max_size=8), values | bulky, max_size=5)),
    st.dictionaries(st.text(max_size=8), values, min_size=1, max_size=5),
)


class ListLoader:
    """Serves given samples; its fingerprint names them (they are not its attributes' JSON)."""

    def __init__(self, given_samples: list[Any], token: str) -> None:
        self._samples = given_samples
        self.token = token

    def sample(self, item: list[Any]) -> Any:
        return self._samples[item[1]]

    def label(self, item: list[Any]) -> int:
        return 0

    def fingerprint(self) -> str:
        return self.token


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(samples, min_size=1, max_size=4))
def test_random_samples_round_trip_through_every_tier(
    tmp_path_factory: pytest.TempPathFactory, given_samples: list[Any]
) -> None:
    cache_dir = tmp_path_factory.mktemp("property")
    split = split_of(len(given_samples))
    expected = served("none", split, ListLoader(given_samples, "x"), cache_dir)
    for tier in ("memory", "disk"):
        loader = ListLoader(given_samples, str(cache_dir))
        assert sample_differences(expected, served(tier, split, loader, cache_dir), tier) == []
