"""Bad input from the user's side: loaders, split items, values at the edges.

Every bad sample gives one `BadSamplesError` after the whole subset was decoded, listing each
failing item (subset, index, item, and what is wrong with which field; bounded, with a
count), raised identically in-process (``parallel=-1``) and from DataLoader workers
(``parallel=2``, forked or spawned); nothing is published that a second run would trust.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from shardcache.errors import BadSamplesError, SampleError, SplitError
from shardcache.store import ensure_cache
from support.builds import leftovers, published
from support.decodes import decode_count, decodes
from support.loaders import (
    N_ITEMS,
    OPEN_FILES,
    BadLoader,
    SizedLoader,
    SlowLoader,
    make_items,
    reference_digest,
    sized_sample,
)
from support.samples import dataset_digest

BAD = (3, 17)


@pytest.fixture(autouse=True)
def _close_files() -> Iterator[None]:
    yield
    while OPEN_FILES:
        OPEN_FILES.pop().close()


def _fail(tmp_path: Path, loader: object, parallel: int, items: list | None = None) -> str:
    items = make_items() if items is None else items
    with pytest.raises(BadSamplesError) as caught:
        ensure_cache(tmp_path / "cache", "train", items, loader, parallel=parallel)
    assert isinstance(caught.value, SampleError)
    return str(caught.value)


EXPECTED = {
    "non_tensor": "raw_data_loader.sample() returned int as the sample, expected a torch.Tensor",
    "non_pair": (
        "raw_data_loader.sample() returned Tensor, expected a (Tensor, dict) pair or a dict"
    ),
    "non_dict": "raw_data_loader.sample() returned str as metadata, expected a dict",
    "open_file": (
        "metadata field 'handle' cannot be stored: _io.TextIOWrapper is not a JSON value. "
        "Store JSON values (str, int, float, bool, None, lists, dicts) or tensors"
    ),
    "raises": "FileNotFoundError: no such file: img/00{index:02d}.png",
}


@pytest.mark.parametrize("mode", list(EXPECTED))
def test_bad_samples_are_reported_together_naming_each_item(
    tmp_path: Path, decode_log: Path, cache_dir: Path, mode: str
) -> None:
    message = _fail(tmp_path, BadLoader(decode_log, mode, BAD), parallel=-1)
    lines = [
        f"train[{index}] (['img/00{index:02d}.png', {index % 3}]): "
        + EXPECTED[mode].format(index=index)
        for index in BAD
    ]
    assert message == (
        f"2 of {N_ITEMS} items of subset 'train' could not be decoded:\n  " + "\n  ".join(lines)
    )
    assert decode_count(decode_log) == N_ITEMS  # it went on past the first failure
    assert published(cache_dir) == []
    # A second run trusts nothing of it: it decodes the bad items again and fails the same.
    assert _fail(tmp_path, BadLoader(decode_log, mode, BAD), parallel=-1) == message
    assert decode_count(decode_log) == N_ITEMS + len(BAD)
    assert published(cache_dir) == []
    assert leftovers(cache_dir) == []


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(EXPECTED))
def test_bad_samples_from_worker_processes_read_the_same(tmp_path: Path, mode: str) -> None:
    in_process = _fail(tmp_path / "a", BadLoader(tmp_path / "a.log", mode, BAD), parallel=-1)
    workers = _fail(tmp_path / "b", BadLoader(tmp_path / "b.log", mode, BAD), parallel=2)
    assert workers == in_process
    assert decode_count(tmp_path / "b.log") == N_ITEMS


@pytest.mark.slow
def test_bad_samples_from_spawned_workers_read_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loader = BadLoader(tmp_path / "a.log", "open_file", BAD)
    in_process = _fail(tmp_path / "a", loader, parallel=-1)
    monkeypatch.setenv("SHARDCACHE_START_METHOD", "spawn")
    spawned = _fail(tmp_path / "b", BadLoader(tmp_path / "b.log", "open_file", BAD), parallel=2)
    assert spawned == in_process
    workers = {decode.pid for decode in decodes(tmp_path / "b.log")}
    assert len(workers) == 2  # decoded in the two spawned workers, not here
    assert os.getpid() not in workers


@pytest.mark.parametrize("parallel", [-1, 2])
def test_many_bad_samples_give_a_bounded_list_with_a_count(
    decode_log: Path, cache_dir: Path, parallel: int
) -> None:
    bad = range(5, 35)
    loader = BadLoader(decode_log, "non_tensor", bad)
    with pytest.raises(BadSamplesError) as caught:
        ensure_cache(cache_dir, "train", make_items(), loader, parallel=parallel)
    message = str(caught.value)
    assert message.startswith(f"30 of {N_ITEMS} items of subset 'train' could not be decoded:\n")
    listed = re.findall(r"^  train\[(\d+)\] ", message, flags=re.MULTILINE)
    assert listed == [str(index) for index in range(5, 25)]
    assert message.endswith("\n  ... and 10 more")
    assert len(caught.value.failures) == 20


@pytest.mark.parametrize("parallel", [-1, 2])
def test_an_item_that_is_not_json_is_refused_before_decoding(
    decode_log: Path, cache_dir: Path, parallel: int
) -> None:
    items = make_items()
    odd = object()
    items[5] = odd  # type: ignore[call-overload]
    loader = SlowLoader(decode_log)
    with pytest.raises(SplitError) as caught:
        ensure_cache(cache_dir, "train", items, loader, parallel=parallel)
    assert str(caught.value).startswith(
        f"train[5] ({odd!r}): split items must be JSON values (str, number, list, dict with "
        "string keys)"
    )
    assert decode_count(decode_log) == 0
    assert not (cache_dir).exists() or published(cache_dir) == []


def test_an_empty_subset_is_refused(decode_log: Path, cache_dir: Path) -> None:
    loader = SlowLoader(decode_log)
    with pytest.raises(SplitError, match="subset 'train' is empty"):
        ensure_cache(cache_dir, "train", [], loader)


def test_nan_inf_and_negative_zero_are_stored_faithfully(decode_log: Path, cache_dir: Path) -> None:
    loader = SlowLoader(decode_log)
    dataset = ensure_cache(cache_dir, "train", make_items(), loader, shard_bytes=2048)
    tensor, metadata = dataset[3]  # see reference_sample: index % 7 == 3
    head = tensor[0, 0, :4]
    assert math.isnan(head[0])
    assert (head[1], head[2]) == (math.inf, -math.inf)
    assert head[3] == 0
    assert torch.signbit(head[3])
    _, metadata = dataset[5]
    assert math.isnan(metadata["nan"])
    assert dataset_digest(dataset) == reference_digest(make_items())  # every bit


@pytest.mark.parametrize("parallel", [-1, 2])
def test_samples_larger_than_a_shard_get_a_shard_each(
    decode_log: Path, cache_dir: Path, parallel: int
) -> None:
    items = make_items(12)
    loader = SizedLoader(decode_log, small=64 << 10, large=64 << 10)
    dataset = ensure_cache(
        cache_dir, "train", items, loader, parallel=parallel, shard_bytes=16 << 10
    )
    assert [(s.start, s.stop) for s in dataset.manifest.shards] == [(i, i + 1) for i in range(12)]
    expected = reference_digest(items, lambda item: sized_sample(item, 64 << 10, 64 << 10, 0))
    assert dataset_digest(dataset) == expected
