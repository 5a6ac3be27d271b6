"""Comparing samples bit for bit and type for type, and one digest of a whole dataset.

A sample is a ``(tensor, metadata)`` pair or a dict. Two samples are equal when every tensor
has the same class (tv_tensors included, with their attributes), dtype, shape and bytes (so
NaN payloads, -0.0 and subnormals count) and every other value the same type and value, keys
in the same order. `sample_differences` says what differs; `samples_digest` folds the same
comparison into one SHA-256, for samples served in another process (a child reports the
digest, the test compares it with its own).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from typing import Any

import torch

TV_ATTRIBUTES = ("format", "canvas_size", "clamping_mode")
"""What a tv_tensor carries beside its data (the ones that have them)."""


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The raw bytes of ``tensor``'s elements in row-major order."""
    flat = tensor.detach().as_subclass(torch.Tensor).reshape(-1).contiguous()
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def _attributes(tensor: torch.Tensor) -> dict[str, str]:
    return {name: repr(getattr(tensor, name)) for name in TV_ATTRIBUTES if hasattr(tensor, name)}


# ---- differences ------------------------------------------------------------------------


def _value_differences(expected: Any, actual: Any, where: str) -> list[str]:
    if type(expected) is not type(actual):
        return [f"{where}: {type(actual).__name__} instead of {type(expected).__name__}"]
    if isinstance(expected, torch.Tensor):
        if _attributes(expected) != _attributes(actual):
            return [f"{where}: attributes {_attributes(actual)} instead of {_attributes(expected)}"]
        if (expected.dtype, expected.shape) != (actual.dtype, actual.shape):
            return [
                f"{where}: {actual.dtype} {tuple(actual.shape)} instead of "
                f"{expected.dtype} {tuple(expected.shape)}"
            ]
        if tensor_bytes(expected) != tensor_bytes(actual):
            return [f"{where}: tensor bytes differ"]
        return []
    if isinstance(expected, dict):
        if list(expected) != list(actual):
            return [f"{where}: keys {list(actual)} instead of {list(expected)}"]
        return [
            difference
            for key in expected
            for difference in _value_differences(expected[key], actual[key], f"{where}[{key!r}]")
        ]
    if isinstance(expected, list | tuple):
        if len(expected) != len(actual):
            return [f"{where}: {len(actual)} elements instead of {len(expected)}"]
        return [
            difference
            for index, (left, right) in enumerate(zip(expected, actual, strict=True))
            for difference in _value_differences(left, right, f"{where}[{index}]")
        ]
    if isinstance(expected, float) and math.isnan(expected):
        return [] if math.isnan(actual) else [f"{where}: {actual!r} instead of nan"]
    if isinstance(expected, float) and expected == 0.0:
        same_sign = math.copysign(1, expected) == math.copysign(1, actual)
        return [] if actual == 0.0 and same_sign else [f"{where}: {actual!r} != {expected!r}"]
    return [] if expected == actual else [f"{where}: {actual!r} != {expected!r}"]


def sample_differences(expected: Any, actual: Any, where: str = "sample") -> list[str]:
    """What differs between two samples (pairs, dicts, or any value), bit for bit and type
    for type; empty when they are the same."""
    if isinstance(expected, tuple) and isinstance(actual, list) and len(actual) == len(expected):
        actual = tuple(actual)  # a DataLoader with batch_size=None passes pairs on as lists
    return _value_differences(expected, actual, where)


def dataset_differences(expected: Any, actual: Any) -> list[str]:
    """Differences between two datasets, sample by sample (empty when they serve the same)."""
    if len(expected) != len(actual):
        return [f"{len(actual)} samples instead of {len(expected)}"]
    return [
        difference
        for index in range(len(expected))
        for difference in sample_differences(expected[index], actual[index], f"[{index}]")
    ]


# ---- digests ----------------------------------------------------------------------------


def _canonical(value: Any) -> Any:
    """``value`` as JSON that keeps every type, the order of keys and the bits of tensors."""
    if isinstance(value, torch.Tensor):
        digest = hashlib.sha256(tensor_bytes(value)).hexdigest()
        return {
            "class": type(value).__name__,
            "attributes": _attributes(value),
            "dtype": str(value.dtype),
            "shape": list(value.shape),
            "sha256": digest,
        }
    if isinstance(value, dict):
        return {"dict": [[key, _canonical(element)] for key, element in value.items()]}
    if isinstance(value, list | tuple):
        return {type(value).__name__: [_canonical(element) for element in value]}
    return {type(value).__name__: repr(value)}  # repr: nan, -0.0, 1 and 1.0 stay apart


def samples_digest(samples: Iterable[Any], labels: Iterable[Any] = ()) -> str:
    """One SHA-256 over each sample's structure, classes, dtypes, shapes, bytes and typed
    values, then the labels."""
    hasher = hashlib.sha256()
    for sample in samples:
        hasher.update(json.dumps(_canonical(sample)).encode())
    hasher.update(json.dumps(_canonical(list(labels))).encode())
    return hasher.hexdigest()


def dataset_digest(dataset: Any) -> str:
    """`samples_digest` of every sample a dataset serves, in order, and its ``labels()``."""
    return samples_digest((dataset[index] for index in range(len(dataset))), dataset.labels())
