"""Canonical samples taken apart for storage and put together again: skeleton and tensors.

`flatten` turns a sample into its skeleton (JSON, see `shardcache.core.records`) and its
tensors in skeleton order; `unflatten` puts them together with fresh containers (a caller
may change them without changing what is cached), tv_tensors with their class and
attributes.
"""

from __future__ import annotations

from typing import Any

import torch

from .records import TV_TENSOR_ATTRIBUTES
from .types import Sample


def _tv_attributes(tensor: torch.Tensor) -> dict[str, Any]:
    """A TVTensor's attributes as JSON (enums by name, tuples as lists)."""
    attributes: dict[str, Any] = {}
    for name in TV_TENSOR_ATTRIBUTES[type(tensor).__name__]:
        value = getattr(tensor, name)
        if hasattr(value, "name") and not isinstance(value, str):  # an Enum
            value = value.name
        elif isinstance(value, tuple):
            value = list(value)
        attributes[name] = value
    return attributes


def _flatten(value: Any, tensors: list[torch.Tensor]) -> Any:
    """The skeleton node of ``value``: JSON with tensors replaced by their positions."""
    if isinstance(value, torch.Tensor):
        node: dict[str, Any] = {"tensor": len(tensors)}
        tensors.append(value)
        if type(value) is not torch.Tensor:
            node["class"] = type(value).__name__
            node["attributes"] = _tv_attributes(value)
        return node
    if isinstance(value, dict):
        before = len(tensors)
        pairs = [[key, _flatten(element, tensors)] for key, element in value.items()]
        return {"dict": pairs} if len(tensors) > before else {"json": value}
    if isinstance(value, list):
        before = len(tensors)
        nodes = [_flatten(element, tensors) for element in value]
        return {"list": nodes} if len(tensors) > before else {"json": value}
    return {"json": value}


def flatten(sample: Sample) -> tuple[dict[str, Any], list[torch.Tensor]]:
    """A canonical sample as a JSON skeleton and its tensors, in the skeleton's order."""
    tensors: list[torch.Tensor] = []
    if isinstance(sample, tuple):
        skeleton = {"pair": [_flatten(sample[0], tensors), _flatten(sample[1], tensors)]}
    else:
        skeleton = _flatten(sample, tensors)
    return skeleton, tensors


def fresh(value: Any) -> Any:
    """New containers for a canonical value, tensors shared.

    A caller may then change the containers without changing a cached original.
    """
    if isinstance(value, dict):
        return {key: fresh(element) for key, element in value.items()}
    if isinstance(value, list):
        return [fresh(element) for element in value]
    if isinstance(value, tuple):  # a (tensor, metadata) pair
        return tuple(fresh(element) for element in value)
    return value


def _tv_tensor(tensor: torch.Tensor, name: str, attributes: dict[str, Any]) -> torch.Tensor:
    from torchvision import tv_tensors  # only samples that held TVTensors need torchvision

    cls: Any = getattr(tv_tensors, name)
    wrapped: torch.Tensor
    if name == "BoundingBoxes":
        wrapped = cls(
            tensor,
            format=tv_tensors.BoundingBoxFormat[attributes["format"]],
            canvas_size=tuple(attributes["canvas_size"]),
            clamping_mode=attributes["clamping_mode"],
        )
    elif name == "KeyPoints":
        wrapped = cls(tensor, canvas_size=tuple(attributes["canvas_size"]))
    else:
        wrapped = tensor.as_subclass(cls)
    return wrapped


def _unflatten(node: dict[str, Any], tensors: list[torch.Tensor]) -> Any:
    if "json" in node:
        return fresh(node["json"])
    if "tensor" in node:
        tensor = tensors[node["tensor"]]
        # A lazy sample's `Narrow` stays as it is: batches hold plain tensors anyway.
        if "class" in node and isinstance(tensor, torch.Tensor):
            return _tv_tensor(tensor, node["class"], node["attributes"])
        return tensor
    if "dict" in node:
        return {key: _unflatten(child, tensors) for key, child in node["dict"]}
    return [_unflatten(child, tensors) for child in node["list"]]


def unflatten(skeleton: dict[str, Any], tensors: list[torch.Tensor]) -> Sample:
    """The sample that `flatten` took apart, with ``tensors`` in place (fresh containers)."""
    if "pair" in skeleton:
        first, second = skeleton["pair"]
        return _unflatten(first, tensors), _unflatten(second, tensors)
    result: dict[str, Any] = _unflatten(skeleton, tensors)
    return result
