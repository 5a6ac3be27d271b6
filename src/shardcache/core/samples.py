"""What a sample is, and the one rule for what it may hold (`canonical_sample`).

A raw loader's ``sample(item)`` returns a pair ``(Tensor, dict)`` (the seed contract,
served back as a tuple) or a mapping with string keys (served back as a dict, e.g.
mednet's ``{"image": tv_tensors.Image, "target": Tensor, "name": str}``). Every tier
passes what the loader returns through `canonical_sample`, so every tier serves the same
structure, types and values. The rule, at any depth:

=========================================  =============================================
kept exactly                               ``torch.Tensor`` (dense, CPU, a dtype with a
                                           safetensors code); ``tv_tensors`` ``Image``,
                                           ``Video``, ``Mask``, ``BoundingBoxes``,
                                           ``KeyPoints`` (class and attributes); ``None``,
                                           ``bool``, ``int``, ``float`` (NaN, infinities,
                                           -0.0), ``str``; ``list``; ``dict`` with str keys
converted, in every tier                   ``tuple`` below the top -> ``list``; other
                                           mappings (``OrderedDict``) -> ``dict``; NumPy
                                           scalars and subclasses of the JSON scalars
                                           (enums) -> ``float``/``int``/``bool``/``str``;
                                           NumPy arrays -> ``torch.Tensor``;
                                           ``nn.Parameter`` and tensors that require grad
                                           -> detached ``torch.Tensor``; conjugate or
                                           negative views -> resolved
refused with a `SampleError` naming the    sparse, nested, quantized tensors; tensors not
subset, index, item and field              on the CPU (meta included); dtypes without a
                                           safetensors code (``complex128``); other tensor
                                           subclasses; non-str dict keys; other objects;
                                           nesting deeper than `MAX_DEPTH`
=========================================  =============================================
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .dtypes import SAFETENSORS_CODES
from .errors import SampleError
from .records import MAX_DEPTH, TV_TENSOR_ATTRIBUTES
from .types import Sample

_TV_MODULE = "torchvision.tv_tensors"


_JSON_SCALARS = (str, bool, int, float)


def describe(subset: str, index: int, item: Any) -> str:
    """Name a split item the way every error message does: ``train[41] ('img/0042.png')``."""
    text = repr(item)
    if len(text) > 120:
        text = text[:117] + "..."
    return f"{subset}[{index}] ({text})"


@dataclass(frozen=True)
class Where:
    """The split item a sample comes from, for messages that name it."""

    subset: str
    index: int
    item: Any

    def error(self, problem: str) -> SampleError:
        """A `SampleError` saying ``problem`` of this item."""
        return SampleError(
            f"{describe(self.subset, self.index, self.item)}: {problem}",
            subset=self.subset,
            index=self.index,
            item=self.item,
        )


def _is_tv_tensor(value: torch.Tensor) -> bool:
    return type(value).__module__.startswith(_TV_MODULE)


def _tensor(value: torch.Tensor, where: Where, field: str) -> torch.Tensor:
    """``value`` as it will be served, or `SampleError` saying why it cannot be."""
    if value.is_nested or value.layout != torch.strided or value.is_quantized:
        layout = "nested" if value.is_nested else str(value.layout)
        raise where.error(f"{field} is a {layout} tensor; samples hold dense (strided) tensors")
    kind = type(value)
    known = _is_tv_tensor(value) and kind.__name__ in TV_TENSOR_ATTRIBUTES
    if kind is not torch.Tensor and kind is not torch.nn.Parameter and not known:
        raise where.error(
            f"{field} is a {kind.__module__}.{kind.__qualname__}, a tensor subclass that "
            "cannot be kept; return a torch.Tensor or a tv_tensors "
            + "/".join(TV_TENSOR_ATTRIBUTES)
        )
    if value.device.type != "cpu":
        raise where.error(
            f"{field} is a tensor on device {value.device}; return CPU tensors (Lightning "
            "moves each batch to the accelerator)"
        )
    if value.dtype not in SAFETENSORS_CODES:
        storable = ", ".join(sorted(str(dtype) for dtype in SAFETENSORS_CODES))
        raise where.error(f"{field} is a {value.dtype} tensor; storable dtypes are {storable}")
    if value.requires_grad or kind is torch.nn.Parameter:
        value = value.detach()
    if value.is_conj():
        value = value.resolve_conj()
    if value.is_neg():
        value = value.resolve_neg()
    return value


def _numpy_value(value: Any, where: Where, field: str) -> Any:
    """A NumPy scalar as a Python scalar, an array as a tensor; None if not NumPy."""
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return None
    if isinstance(value, numpy.generic):
        converted = value.item()
        if isinstance(converted, str | bool | int | float):
            return converted
        raise where.error(f"{field} is a numpy.{type(value).__name__}, not a storable scalar")
    if isinstance(value, numpy.ndarray):
        if value.dtype.hasobject:
            raise where.error(f"{field} is a NumPy array of Python objects")
        return _tensor(torch.tensor(value), where, field)
    return None


def _child(field: str, key: object, depth: int) -> str:
    """``metadata field 'mask'`` at the top, ``metadata field 'boxes'[0]`` below."""
    return f"{field} {key!r}" if depth == 0 else f"{field}[{key!r}]"


def _value(value: Any, where: Where, field: str, depth: int) -> Any:
    """``value`` as every tier serves it (see the module docstring), checked."""
    if value is None or type(value) in _JSON_SCALARS:
        return value
    if isinstance(value, torch.Tensor):
        return _tensor(value, where, field)
    if depth >= MAX_DEPTH:
        raise where.error(f"{field} nests containers deeper than {MAX_DEPTH} levels")
    if isinstance(value, Mapping):
        return _mapping(value, where, field, depth + 1)
    if isinstance(value, list | tuple):
        return [
            _value(v, where, _child(field, i, depth + 1), depth + 1) for i, v in enumerate(value)
        ]
    converted = _numpy_value(value, where, field)
    if converted is not None:
        return converted
    for scalar in _JSON_SCALARS:  # a subclass (an IntEnum, a str subclass): its plain value
        if isinstance(value, scalar):
            return scalar(value)
    kind = type(value)
    raise where.error(
        f"{field} cannot be stored: {kind.__module__}.{kind.__qualname__} is not a JSON value. "
        "Store JSON values (str, int, float, bool, None, lists, dicts) or tensors"
    )


def _mapping(value: Mapping[Any, Any], where: Where, field: str, depth: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, element in value.items():
        if not isinstance(key, str):
            raise where.error(
                f"{field} has the key {key!r}, a {type(key).__name__}; keys must be strings"
            )
        result[key] = _value(element, where, _child(field, key, depth), depth)
    return result


def canonical_sample(value: object, where: Where) -> Sample:
    """What ``raw_data_loader.sample()`` returned, as every tier serves it.

    Raises:
        SampleError: naming the item and the field that breaks the rule.
    """
    if isinstance(value, Mapping):
        return _mapping(value, where, "field", 0)
    if not isinstance(value, tuple | list) or len(value) != 2:
        kind = type(value).__name__
        if isinstance(value, tuple | list):
            kind = f"a {kind} of length {len(value)}"
        raise where.error(
            f"raw_data_loader.sample() returned {kind}, expected a (Tensor, dict) pair or a dict"
        )
    tensor, metadata = value
    if not isinstance(tensor, torch.Tensor):
        raise where.error(
            f"raw_data_loader.sample() returned {type(tensor).__name__} as the sample, "
            "expected a torch.Tensor"
        )
    if not isinstance(metadata, Mapping):
        raise where.error(
            f"raw_data_loader.sample() returned {type(metadata).__name__} as metadata, "
            "expected a dict"
        )
    return _tensor(tensor, where, "the sample tensor"), _mapping(
        metadata, where, "metadata field", 0
    )
