"""The JSON that describes a stored sample, and its checks: no torch needed.

A sample's **skeleton** is its structure with tensors replaced by their positions
(`shardcache.core.samples.flatten` makes it, ``unflatten`` reads it)::

    {"pair": [node, node]}                   the (tensor, metadata) pair, at the top only
    {"dict": [[key, node], ...]}             a dict holding tensors somewhere below
    {"list": [node, ...]}                    a list holding tensors somewhere below
    {"tensor": k}                            tensor k of the sample
    {"tensor": k, "class": "BoundingBoxes",  a tv_tensors class, with its attributes
     "attributes": {...}}
    {"json": value}                          a JSON value without tensors

A **widening** says how a narrow stored tensor is served: ``[stored, served, scale, op]``,
e.g. ``["U8", "F32", 255, "div"]`` (see `shardcache.core.narrow`).
"""

from __future__ import annotations

from typing import Any

MAX_DEPTH = 16
"""Containers nested deeper than this are refused (and never recursed into)."""

TV_TENSOR_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "Image": (),
    "Video": (),
    "Mask": (),
    "BoundingBoxes": ("format", "canvas_size", "clamping_mode"),
    "KeyPoints": ("canvas_size",),
}
"""The ``torchvision.tv_tensors`` classes a sample may hold, with the attributes they keep."""

STORED_CODES = ("U8", "U16")
SERVED_CODES = ("F32", "F64")
OPERATIONS = ("div", "mul")


def widening_problem(value: object) -> str | None:
    """Why ``value`` is not a widening, or None."""
    if not (isinstance(value, list) and len(value) == 4):
        return f"{value!r} is not a widening"
    stored, served, scale, op = value
    if (
        stored not in STORED_CODES
        or served not in SERVED_CODES
        or type(scale) is not int
        or scale < 1
        or op not in OPERATIONS
    ):
        return f"{value!r} is not a widening"
    return None


def _children(node: dict[str, Any], depth: int) -> list[object] | str:
    """A container node's children, or why it is malformed."""
    if isinstance(node.get("dict"), list):
        pairs = node["dict"]
        if not all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) for p in pairs):
            return "a dict node is malformed"
        return [pair[1] for pair in pairs]
    if isinstance(node.get("list"), list):
        children: list[object] = node["list"]
        return children
    if depth == 0 and isinstance(node.get("pair"), list) and len(node["pair"]) == 2:
        pair: list[object] = node["pair"]
        return pair
    return "a node has no known kind"


def _tensor_problem(node: dict[str, Any], count: int, seen: list[int]) -> str | None:
    position = node["tensor"]
    if type(position) is not int or not 0 <= position < count:
        return f"tensor position {position!r} is out of range"
    seen.append(position)
    name = node.get("class")
    if name is not None and (
        name not in TV_TENSOR_ATTRIBUTES
        or not isinstance(node.get("attributes"), dict)
        or sorted(node["attributes"]) != sorted(TV_TENSOR_ATTRIBUTES[name])
    ):
        return f"tensor class {name!r} or its attributes are malformed"
    return None


def skeleton_problem(skeleton: object, count: int) -> str | None:
    """Why ``skeleton`` is not one that `flatten` makes for ``count`` tensors, or None."""
    seen: list[int] = []
    pending: list[tuple[object, int]] = [(skeleton, 0)]
    while pending:
        node, depth = pending.pop()
        if depth > MAX_DEPTH + 1 or not isinstance(node, dict) or not node:
            return "a skeleton node is not an object"
        if "json" in node:
            continue
        if "tensor" in node:
            problem = _tensor_problem(node, count, seen)
            if problem is not None:
                return problem
            continue
        children = _children(node, depth)
        if isinstance(children, str):
            return children
        pending.extend((child, depth + 1) for child in children)
    if sorted(seen) != list(range(count)):
        return f"the skeleton places tensors {sorted(seen)}, not each of {count} once"
    return None
