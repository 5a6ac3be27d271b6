"""How a sample is encoded for a shard: its skeleton, its tensors, each stored narrow if exact.

`encode` runs where samples are decoded (in the decoding workers, so narrow tensors also
cross the process boundary 4x smaller). A float tensor is stored as uint8 or uint16 only
when widening those integers back gives every value bit for bit (`narrow`): nothing
inexact is ever narrowed, and a cache serves exactly what the loader returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core import kernels
from ..core.narrow import Narrow, Widening
from ..core.structure import flatten
from ..core.types import Sample

CANDIDATES: tuple[tuple[str, int], ...] = (("U8", 255), ("U16", 65535), ("U8", 1), ("U16", 1))
"""Stored dtype and scale, tried in order: 8- and 16-bit images scaled to [0, 1], then
integer values held in floats."""

_SERVED = {torch.float32: "F32", torch.float64: "F64"}
_LIMITS = {"U8": 255, "U16": 65535}
_PAIRS = {
    served: [
        (Widening(stored, served, scale, "div"), Widening(stored, served, scale, "mul"))
        for stored, scale in CANDIDATES
    ]
    for served in _SERVED.values()
}
"""Per served dtype, each candidate's two widenings, in the order tried."""


PREFIX = 4096
"""Values checked first: inexact data (a resized image) fails there, before a full pass."""

MIN_ELEMENTS = 1024
"""Smaller tensors (a target, a few boxes) stay as they are: widening each would cost more
per sample than their bytes save."""


def _same_bits(left: np.ndarray, right: np.ndarray) -> bool:
    unsigned = np.uint32 if left.dtype == np.float32 else np.uint64
    return bool(np.array_equal(left.view(unsigned), right.view(unsigned)))


def _exact(values: np.ndarray, pair: tuple[Widening, Widening]) -> Narrow | None:
    """``values`` (flat) as integers with the first of ``pair`` that is exact, or None."""
    stored, scale = pair[0].stored, pair[0].scale
    if values.size == 0:
        return None
    scaled = np.multiply(values, values.dtype.type(scale))
    np.rint(scaled, out=scaled)
    if not (scaled.min() >= 0 and scaled.max() <= _LIMITS[stored]):  # NaN fails too
        return None
    integers = scaled.astype(np.uint8 if stored == "U8" else np.uint16)
    widened = np.empty_like(values)
    for widening in pair:
        widening.apply(integers, widened)
        if _same_bits(values, widened):
            return Narrow(torch.from_numpy(integers), widening)
    return None


def _exact_in_c(loops: Any, flat: torch.Tensor, pair: tuple[Widening, Widening]) -> Narrow | None:
    """`_exact` in one C pass (`kernels.narrow_exact`)."""
    out = torch.empty(flat.numel(), dtype=pair[0].stored_dtype)
    for widening, ok in zip(pair, kernels.narrow_exact(loops, flat, out, pair), strict=True):
        if ok:
            return Narrow(out, widening)
    return None


def _exact_in_numpy(flat: np.ndarray, pair: tuple[Widening, Widening]) -> Narrow | None:
    """`_exact` on a prefix first (inexact data fails there), then on everything."""
    head = _exact(flat[:PREFIX], pair)
    if head is None or flat.size <= PREFIX:
        return head
    return _exact(flat, pair)


def narrow(tensor: torch.Tensor) -> Narrow | None:
    """``tensor`` as stored integers plus a widening that gives it back exactly, or None.

    Tries each of `CANDIDATES` with both ways loaders scale (``k / s``, ``k * (1 / s)``):
    narrow, widen with the very arithmetic that serves it, compare the bits: in one C pass
    where the C widening is numpy's to the bit (`kernels.checks_in_c`), else in numpy.
    """
    served = _SERVED.get(tensor.dtype)
    if served is None or tensor.numel() < MIN_ELEMENTS:
        return None
    plain = tensor if type(tensor) is torch.Tensor else tensor.as_subclass(torch.Tensor)
    flat = plain.contiguous().reshape(-1)
    loops = kernels.native()
    for pair in _PAIRS[served]:
        if loops is not None and kernels.checks_in_c(pair):
            found = _exact_in_c(loops, flat, pair)
        else:
            found = _exact_in_numpy(flat.numpy(), pair)
        if found is not None:
            return Narrow(found.data.reshape(tensor.shape), found.widening)
    return None


@dataclass(frozen=True)
class Encoded:
    """A sample as a shard stores it.

    Attributes:
        skeleton: the sample's structure as JSON (see `shardcache.core.samples.flatten`).
        tensors: its tensors in skeleton order, each a tensor or a `Narrow`.
    """

    skeleton: dict[str, Any]
    tensors: list[torch.Tensor | Narrow]

    @property
    def stored_bytes(self) -> int:
        """Bytes of tensor data on disk."""
        return sum(_data(t).nbytes for t in self.tensors)

    @property
    def served_bytes(self) -> int:
        """Bytes of tensor data as served."""
        return sum(_served_nbytes(t) for t in self.tensors)


def _data(tensor: torch.Tensor | Narrow) -> torch.Tensor:
    return tensor.data if isinstance(tensor, Narrow) else tensor


def _served_nbytes(tensor: torch.Tensor | Narrow) -> int:
    return (
        tensor.data.numel() * tensor.dtype.itemsize if isinstance(tensor, Narrow) else tensor.nbytes
    )


def encode(sample: Sample, *, narrowing: bool = True) -> Encoded:
    """Take a canonical sample apart for a shard, narrowing what can be narrowed exactly."""
    skeleton, tensors = flatten(sample)
    if not narrowing:
        return Encoded(skeleton, list(tensors))
    stored: list[torch.Tensor | Narrow] = []
    for tensor in tensors:
        narrowed = narrow(tensor)
        stored.append(tensor if narrowed is None else narrowed)
    return Encoded(skeleton, stored)
