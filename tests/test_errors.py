"""The error tree: its shape, one-string construction, pickling, and DataLoader workers."""

from __future__ import annotations

import inspect
import pickle
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from shardcache.core import errors
from support.processes import raised_by

# name: (parent in our tree, builtin that old ``except`` clauses catch)
TREE = {
    "ShardCacheError": (Exception, Exception),
    "ConfigurationError": (errors.ShardCacheError, ValueError),
    "SplitError": (errors.ShardCacheError, ValueError),
    "FingerprintError": (errors.ShardCacheError, TypeError),
    "SampleError": (errors.ShardCacheError, TypeError),
    "BadSamplesError": (errors.SampleError, TypeError),
    "CacheError": (errors.ShardCacheError, Exception),
    "CorruptCacheError": (errors.CacheError, Exception),
    "FormatVersionError": (errors.CorruptCacheError, Exception),
    "CacheDirError": (errors.CacheError, OSError),
    "InsufficientSpaceError": (errors.CacheError, OSError),
    "LockTimeoutError": (errors.CacheError, TimeoutError),
    "PeerFailedError": (errors.CacheError, RuntimeError),
}


def pickled(error: Exception) -> Exception:
    """``error`` after a trip through pickle (our own bytes, so loads is safe)."""
    restored: Exception = pickle.loads(pickle.dumps(error))  # noqa: S301
    return restored


CLASSES = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, errors.ShardCacheError)
]


def test_the_tree_is_as_documented() -> None:
    assert sorted(cls.__name__ for cls in CLASSES) == sorted(TREE)
    for cls in CLASSES:
        parent, builtin = TREE[cls.__name__]
        assert cls.__bases__[0] is parent, cls
        assert issubclass(cls, builtin), cls
        assert cls.__name__ in (errors.__doc__ or ""), f"{cls.__name__} missing from the drawing"


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_constructible_from_one_string_and_picklable(cls: type[errors.ShardCacheError]) -> None:
    error = cls("train[3] ('a.png'): something went wrong")
    assert str(error) == "train[3] ('a.png'): something went wrong"
    rebuilt = type(error)(str(error))
    assert (type(rebuilt), str(rebuilt)) == (cls, str(error))
    restored = pickled(error)
    assert (type(restored), str(restored), restored.args) == (cls, str(error), error.args)
    assert vars(restored) == vars(error)


@pytest.mark.parametrize(
    "error",
    [
        errors.SampleError("m", subset="train", index=3, item=["a.png", 1]),
        errors.BadSamplesError("m", failures=("train[1] ...", "train[3] ...")),
        errors.CorruptCacheError("m", path=Path("/cache/train-abc/shard.safetensors")),
        errors.FormatVersionError("m", path=Path("/cache/train-abc/manifest.json")),
        errors.PeerFailedError("m", rank=3),
    ],
    ids=lambda error: type(error).__name__,
)
def test_pickling_keeps_the_details(error: errors.ShardCacheError) -> None:
    restored = pickled(error)
    assert type(restored) is type(error)
    assert vars(restored) == vars(error)
    assert vars(error)  # the details are there to keep


class _Raising(Dataset[torch.Tensor]):
    def __init__(self, cls: type[Exception]) -> None:
        self.cls = cls

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> torch.Tensor:
        if index == 1:
            raise self.cls(f"item {index} is broken")
        return torch.zeros(1)


@pytest.mark.slow
@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_raised_in_a_worker_keeps_its_type(cls: type[errors.ShardCacheError]) -> None:
    error = raised_by(DataLoader(_Raising(cls), batch_size=1, num_workers=1))
    assert type(error) is cls  # not torch's RuntimeError fallback
    assert f"{cls.__name__}: item 1 is broken" in str(error)
