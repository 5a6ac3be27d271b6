"""The on-disk format, pinned byte for byte: an accidental format change fails here.

A deliberate change bumps ``FORMAT_VERSION`` and updates these golden values together.
"""

from __future__ import annotations

import json
import re
import struct
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from shardcache import __version__
from shardcache.store import FORMAT_VERSION, CacheDataset, Manifest, ensure_cache
from shardcache.store.header import file_digest
from shardcache.tiers.none import RawDataset
from support.samples import dataset_differences, sample_differences

ITEMS = [["a", 0], ["b", 1]]
WEIGHTS = torch.arange(1024) % 256


class GoldenLoader:
    """A fixed tiny sample pair: a uint8 image with a bool mask and 1,024 float weights that
    are exact multiples of 1/255 (stored narrow), then a float32 vector with JSON metadata."""

    def sample(self, item: list[Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        if item[0] == "a":
            return torch.tensor([[1, 2], [3, 4]], dtype=torch.uint8), {
                "label": 0,
                "mask": torch.tensor([True, False]),
                "name": "a",
                "weights": WEIGHTS.to(torch.float32) / 255,
            }
        return torch.tensor([1.5, -2.0]), {
            "label": 1,
            "name": "b",
            "score": 0.25,
            "tags": ["x", None],
        }

    def label(self, item: list[Any]) -> int:
        return int(item[1])

    def fingerprint(self) -> str:
        return "golden-2"


GOLDEN_KEY = "e45e256eefa919aee49840c3f87e4c25980ebf67d9390eb6bfee98e8fb64fa69"
GOLDEN_DIGEST = "378ff402f538017c4c4fcca23927b17d"  # xxh3-128 of the whole shard file
GOLDEN_SHARD = f"shard-000000000-000000002-{GOLDEN_DIGEST}.safetensors"
GOLDEN_RECORDS = (
    '{"format_version":2,"start":0,"stop":2,"samples":['
    '{"label":0,"sample":{"pair":[{"tensor":0},{"dict":[["label",{"json":0}],'
    '["mask",{"tensor":1}],["name",{"json":"a"}],["weights",{"tensor":2}]]}]},'
    '"tensors":3,"widen":{"2":["U8","F32",255,"div"]}},'
    '{"label":1,"sample":{"pair":[{"tensor":0},{"json":{"label":1,"name":"b","score":0.25,'
    '"tags":["x",null]}}]},"tensors":1}]}'
)
GOLDEN_HEADER = (
    '{"1/0":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
    '"0/0":{"dtype":"U8","shape":[2,2],"data_offsets":[8,12]},'
    '"0/1":{"dtype":"BOOL","shape":[2],"data_offsets":[12,14]},'
    '"0/2":{"dtype":"U8","shape":[1024],"data_offsets":[14,1038]},'
    '"__metadata__":{"shardcache":' + json.dumps(GOLDEN_RECORDS) + "}}"
).encode() + b" "  # spaces pad the header so that tensor data starts 8-byte aligned
# float32 [1.5, -2.0] of sample 1, then of sample 0: uint8 [[1, 2], [3, 4]], bool
# [True, False], and the weights stored narrow as the uint8 they were divided from
GOLDEN_DATA = bytes.fromhex("0000c03f000000c0" + "01020304" + "0100") + bytes(WEIGHTS.tolist())


@pytest.fixture
def cache(cache_dir: Path) -> CacheDataset:
    return ensure_cache(cache_dir, "train", ITEMS, GoldenLoader())


def test_the_cache_directory_holds_exactly_the_format_files(cache: CacheDataset) -> None:
    assert cache.path.name == f"train-{GOLDEN_KEY[:24]}"
    names = sorted(path.name for path in cache.path.iterdir())
    assert names == sorted(["items.json", "last-used", "manifest.json", GOLDEN_SHARD])
    assert (cache.path / "items.json").read_text() == '[["a",0],["b",1]]'


def test_the_shard_bytes_are_pinned(cache: CacheDataset) -> None:
    raw = (cache.path / GOLDEN_SHARD).read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])

    assert raw[:8] == struct.pack("<Q", len(GOLDEN_HEADER))
    assert raw[8 : 8 + length] == GOLDEN_HEADER
    assert raw[8 + length :] == GOLDEN_DATA
    assert (8 + length) % 8 == 0
    assert file_digest(cache.path / GOLDEN_SHARD) == GOLDEN_DIGEST


def test_the_manifest_schema_is_pinned(cache: CacheDataset) -> None:
    manifest = json.loads((cache.path / "manifest.json").read_text())

    assert sorted(manifest) == [
        "created",
        "extra",
        "format",
        "format_version",
        "key",
        "key_inputs",
        "labels",
        "library_version",
        "num_samples",
        "shard_options",
        "shards",
        "storage",
        "subset",
    ]
    created = manifest.pop("created")
    assert datetime.fromisoformat(created).tzinfo is not None
    assert manifest == {
        "extra": {},
        "format": "shardcache",
        "format_version": 2,
        "key": GOLDEN_KEY,
        "key_inputs": {
            "format_version": 2,
            "items_sha256": "d961c692d55a5398569b91f00bbd703f26629ff3e0fa4f491a3d675559f931f0",
            "loader": {"fingerprint": "golden-2"},
            "num_items": 2,
        },
        "labels": [0, 1],
        "library_version": __version__,
        "num_samples": 2,
        "shards": [
            {
                "bytes": 8 + len(GOLDEN_HEADER) + len(GOLDEN_DATA),
                "file": GOLDEN_SHARD,
                "start": 0,
                "stop": 2,
                "xxh3_128": GOLDEN_DIGEST,
            }
        ],
        "shard_options": {
            "checksum": "xxh3_128",
            "chosen_bytes": 4 << 20,
            "narrowing": True,
            "target_bytes": None,
        },
        "storage": {
            "narrow_tensors": 1,
            "served_bytes": 8 + 4 + 2 + 4 * 1024,
            "stored_bytes": 8 + 4 + 2 + 1024,
            "tensors": 4,
        },
        "subset": "train",
    }
    assert FORMAT_VERSION == 2


def test_a_loader_without_fingerprint_records_class_source_and_attributes(cache_dir: Path) -> None:
    class Plain(GoldenLoader):
        fingerprint = None  # type: ignore[assignment]
        shardcache_key_ignores = ("_private",)

        def __init__(self) -> None:
            self.size = 2
            self._private = object()

    dataset = ensure_cache(cache_dir, "train", ITEMS, Plain())
    loader = json.loads((dataset.path / "manifest.json").read_text())["key_inputs"]["loader"]

    assert sorted(loader) == ["attributes", "class", "source_sha256"]
    assert loader["class"] == f"{__name__}.{Plain.__qualname__}"
    assert loader["attributes"] == {"size": 2}
    assert re.fullmatch(r"[0-9a-f]{64}", loader["source_sha256"])


def test_the_manifest_reads_back_as_written(cache: CacheDataset) -> None:
    manifest = Manifest.read(cache.path / "manifest.json")

    assert manifest == cache.manifest
    assert manifest.to_json() == (cache.path / "manifest.json").read_text()
    assert manifest.total_bytes == (cache.path / GOLDEN_SHARD).stat().st_size


def test_any_safetensors_reader_opens_a_shard(cache: CacheDataset) -> None:
    path = cache.path / GOLDEN_SHARD
    with safe_open(str(path), "pt") as shard:
        keys = sorted(shard.keys())
        tensors = {name: shard.get_tensor(name) for name in keys}
        records = json.loads(shard.metadata()["shardcache"])

    assert keys == ["0/0", "0/1", "0/2", "1/0"]
    (first, first_metadata), second = cache[0], cache[1]
    # What a safetensors reader sees, widened as the record says: the samples we serve.
    widened = tensors["0/2"].to(torch.float32) / 255
    assert torch.equal(tensors["0/2"], WEIGHTS.to(torch.uint8))
    from_safetensors = (tensors["0/0"], {**first_metadata, "mask": tensors["0/1"]})
    from_safetensors[1]["weights"] = widened
    assert sample_differences((first, first_metadata), from_safetensors) == []
    assert sample_differences(second, (tensors["1/0"], second[1])) == []
    assert records["samples"][0]["widen"] == {"2": ["U8", "F32", 255, "div"]}
    assert [record["sample"]["pair"][1] for record in records["samples"]][1]["json"]["name"] == "b"
    loaded = load_file(str(path))
    assert all(torch.equal(loaded[name], tensors[name]) for name in keys)


def test_the_cache_serves_what_the_loader_returned(cache: CacheDataset) -> None:
    assert dataset_differences(RawDataset("train", ITEMS, GoldenLoader()), cache) == []
    assert cache.labels() == [0, 1]


def test_a_cache_of_format_1_is_never_served_and_its_miss_is_explained(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cache written by shardcache 0.1 (format 1: no shard options, no storage record,
    format 1 in its key) stays where it is; the new build says the format is why it missed."""
    ensure_cache(tmp_path, "train", ITEMS, GoldenLoader()).close()
    (current,) = [path for path in tmp_path.iterdir() if path.name.startswith("train-")]
    manifest = json.loads((current / "manifest.json").read_text())
    for field in ("shard_options", "storage"):
        del manifest[field]
    manifest["format_version"] = manifest["key_inputs"]["format_version"] = 1
    manifest["key"] = old_key = "0123456789abcdef" * 4
    (current / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    old = current.rename(tmp_path / f"train-{old_key[:24]}")

    with caplog.at_level("INFO", logger="shardcache"):
        dataset = ensure_cache(tmp_path, "train", ITEMS, GoldenLoader())
    try:
        assert dataset.path.name == current.name  # rebuilt under the format-2 key
        assert dataset.manifest.format_version == FORMAT_VERSION == 2
    finally:
        dataset.close()
    assert f"nearest is {old.name}, which differs in format version 1 -> 2" in caplog.text
    assert json.loads((old / "manifest.json").read_text())["format_version"] == 1
