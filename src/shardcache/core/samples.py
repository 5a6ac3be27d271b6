"""Checks on what a raw data loader returns, with messages that name the item at fault."""

from __future__ import annotations

import copy
from typing import Any

import torch

from .dtypes import SAFETENSORS_CODES
from .errors import SampleError
from .types import Sample


def describe(subset: str, index: int, item: Any) -> str:
    """Name a split item the way every error message does: ``train[41] ('img/0042.png')``."""
    text = repr(item)
    if len(text) > 120:
        text = text[:117] + "..."
    return f"{subset}[{index}] ({text})"


def check_sample(value: object, *, subset: str, index: int, item: Any) -> Sample:
    """Return ``value`` as a ``(Tensor, dict)`` pair or raise `SampleError` saying why not."""
    where = describe(subset, index, item)
    if not isinstance(value, tuple | list) or len(value) != 2:
        kind = type(value).__name__
        if isinstance(value, tuple | list):
            kind = f"a {kind} of length {len(value)}"
        raise SampleError(
            f"{where}: raw_data_loader.sample() returned {kind}, expected a (Tensor, dict) pair",
            subset=subset,
            index=index,
            item=item,
        )
    tensor, metadata = value
    if not isinstance(tensor, torch.Tensor):
        raise SampleError(
            f"{where}: raw_data_loader.sample() returned {type(tensor).__name__} as the sample,"
            " expected a torch.Tensor",
            subset=subset,
            index=index,
            item=item,
        )
    if not isinstance(metadata, dict):
        raise SampleError(
            f"{where}: raw_data_loader.sample() returned {type(metadata).__name__} as metadata,"
            " expected a dict",
            subset=subset,
            index=index,
            item=item,
        )
    return tensor, metadata


def check_storable(
    tensor: torch.Tensor, metadata: dict[str, Any], *, subset: str, index: int, item: Any
) -> None:
    """Raise `SampleError` naming the field when a sample cannot be stored on disk.

    Storable: dense tensors of a safetensors dtype, and JSON values (str, int, float incl.
    NaN, bool, None, and lists/dicts of them with string keys) as metadata. Tuples are
    accepted and come back as lists.
    """
    for field, value in [("<sample tensor>", tensor), *metadata.items()]:
        if not isinstance(field, str):
            raise SampleError(
                f"{describe(subset, index, item)}: metadata key {field!r} is a "
                f"{type(field).__name__}; keys must be strings",
                subset=subset,
                index=index,
                item=item,
            )
        if isinstance(value, torch.Tensor):
            if value.layout != torch.strided or value.dtype not in SAFETENSORS_CODES:
                raise SampleError(
                    f"{describe(subset, index, item)}: {field!r} is a {value.layout} "
                    f"{value.dtype} tensor; storable are dense tensors of dtype "
                    + ", ".join(sorted(str(dtype) for dtype in SAFETENSORS_CODES)),
                    subset=subset,
                    index=index,
                    item=item,
                )
            continue
        problem = _json_problem(value)
        if problem is not None:
            raise SampleError(
                f"{describe(subset, index, item)}: metadata field {field!r} cannot be stored: "
                f"{problem}. Store JSON values (str, int, float, bool, None, lists, dicts) or "
                "tensors",
                subset=subset,
                index=index,
                item=item,
            )


def _json_problem(value: object) -> str | None:
    """Say why ``value`` is not a JSON value, or return None when it is."""
    if value is None or isinstance(value, str | bool | int | float):
        return None  # NaN and infinities included: json writes and reads them back
    if isinstance(value, list | tuple):
        for element in value:
            problem = _json_problem(element)
            if problem is not None:
                return problem
        return None
    if isinstance(value, dict):
        for key, element in value.items():
            if not isinstance(key, str):
                return f"dict key {key!r} is not a string"
            problem = _json_problem(element)
            if problem is not None:
                return problem
        return None
    return f"{type(value).__module__}.{type(value).__qualname__} is not a JSON value"


def fresh_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """A copy of cached metadata that a caller may change without changing the cache."""
    if all(
        isinstance(value, str | int | float | bool | torch.Tensor) or value is None
        for value in metadata.values()
    ):
        return dict(metadata)
    return copy.deepcopy(metadata)
