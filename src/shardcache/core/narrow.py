"""Tensors stored narrow (uint8, uint16) and served as the floats a loader returned, exactly.

A float tensor whose every value is ``k / 255`` (or ``k / 65535``, or ``k * (1/255)``, the
other way loaders scale) for integers ``k`` is stored as those ``k`` plus a `Widening`. To
serve it, ``k`` is looked up in the widening's table: the table holds exactly the floats
that the same arithmetic gives, so a served value is bit-identical to what the loader
returned whenever the build checked it (see `shardcache.store.codec`). Widening on the
host runs the same arithmetic elementwise (one pass: read a byte, write four); on an
accelerator, a gather from the table (see `NarrowBatch`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
import torch

from . import kernels
from .records import widening_problem

Operation = Literal["div", "mul"]

STORED_DTYPES = {"U8": torch.uint8, "U16": torch.uint16}
SERVED_DTYPES = {"F32": torch.float32, "F64": torch.float64}
_NUMPY: dict[str, Any] = {"U8": np.uint8, "U16": np.uint16, "F32": np.float32, "F64": np.float64}


@dataclass(frozen=True)
class Widening:
    """How stored integers ``k`` become served floats: ``k / scale`` or ``k * (1 / scale)``.

    The arithmetic is that of the served dtype (``1 / scale`` rounded to it first for
    ``mul``), as ``k.to(torch.float32).div_(255)`` or ``.mul_(1 / 255)`` computes it.
    """

    stored: str
    served: str
    scale: int
    op: Operation

    def to_json(self) -> list[Any]:
        """The form a shard records: ``["U8", "F32", 255, "div"]``."""
        return [self.stored, self.served, self.scale, self.op]

    @classmethod
    def from_json(cls, value: object) -> Widening:
        """Parse what `to_json` wrote; ValueError when it is not a widening."""
        problem = widening_problem(value)
        if problem is not None:
            raise ValueError(problem)
        stored, served, scale, op = cast(list[Any], value)
        return cls(stored, served, scale, op)

    @property
    def stored_dtype(self) -> torch.dtype:
        """The dtype on disk."""
        return STORED_DTYPES[self.stored]

    @property
    def served_dtype(self) -> torch.dtype:
        """The dtype served."""
        return SERVED_DTYPES[self.served]

    def apply(self, stored: np.ndarray, out: np.ndarray) -> None:
        """Widen ``stored`` into ``out`` (same shape, the served dtype), one pass."""
        served: Any = _NUMPY[self.served]
        if self.op == "div":
            np.divide(stored, served(self.scale), out=out, dtype=served)
        else:
            np.multiply(stored, served(1.0 / self.scale), out=out, dtype=served)

    def table(self) -> torch.Tensor:
        """The served value of every stored integer: ``table[k]``."""
        return _table(self)


@functools.cache
def _table(widening: Widening) -> torch.Tensor:
    stored = np.arange(np.iinfo(_NUMPY[widening.stored]).max + 1, dtype=_NUMPY[widening.stored])
    served = np.empty(stored.shape, dtype=_NUMPY[widening.served])
    widening.apply(stored, served)
    return torch.from_numpy(served)


def widen_into(
    data: torch.Tensor,
    widening: Widening,
    out: torch.Tensor,
    loops: kernels.Loops | None = None,
) -> None:
    """Write the served values of the narrow ``data`` into ``out``, a float tensor of its shape.

    Both must be contiguous CPU tensors; ``out`` may be a view into a batch buffer.
    ``loops``: the caller's choice of `kernels.Loops` (one per batch), else chosen now.
    """
    (loops or kernels.loops()).widen(data, widening, out)


class Narrow:
    """A tensor as stored narrow, with what it takes to serve it.

    Attributes:
        data: the stored integers (a uint8 or uint16 tensor, often a view of a mapping).
        widening: how they become the served floats.
    """

    __slots__ = ("data", "widening")

    def __init__(self, data: torch.Tensor, widening: Widening) -> None:
        self.data = data
        self.widening = widening

    @property
    def shape(self) -> torch.Size:
        """The served tensor's shape."""
        return self.data.shape

    @property
    def dtype(self) -> torch.dtype:
        """The served tensor's dtype."""
        return self.widening.served_dtype

    def widen(self) -> torch.Tensor:
        """The served tensor, as a new contiguous float tensor."""
        out = torch.empty(self.data.shape, dtype=self.dtype)
        widen_into(self.data.contiguous(), self.widening, out)
        return out

    def __reduce__(self) -> Any:
        return (Narrow, (self.data, self.widening))


class NarrowBatch:
    """A batch field left narrow for the accelerator: widened after the transfer.

    Lightning moves any object with a ``to`` method to the device; the DataModule's
    ``on_after_batch_transfer`` then calls `widen` there, so host-to-device traffic is the
    narrow bytes. Widening gathers from the widening's table on the device: exact there too.
    """

    __slots__ = ("data", "widening")

    def __init__(self, data: torch.Tensor, widening: Widening) -> None:
        self.data = data
        self.widening = widening

    def to(self, *args: Any, **kwargs: Any) -> NarrowBatch:
        """This batch on another device (the narrow bytes move)."""
        return NarrowBatch(self.data.to(*args, **kwargs), self.widening)

    def pin_memory(self) -> NarrowBatch:
        """This batch in page-locked memory (for the DataLoader's pin_memory thread)."""
        return NarrowBatch(self.data.pin_memory(), self.widening)

    def widen(self) -> torch.Tensor:
        """The served float batch, on the device that holds the data."""
        if self.data.device.type == "cpu":
            out = torch.empty(self.data.shape, dtype=self.widening.served_dtype)
            widen_into(self.data.contiguous(), self.widening, out)
            return out
        table = self.widening.table().to(self.data.device, non_blocking=True)
        return table[self.data.to(torch.int64)]

    def __reduce__(self) -> Any:
        return (NarrowBatch, (self.data, self.widening))
