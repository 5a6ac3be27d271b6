"""The loops a batch is made of (copy bytes, widen narrow integers), and the narrowing check.

The check is the build's: may a float tensor be stored narrow (`narrow_exact`).

In C (`shardcache.core._native`, built with the package) where it was built and
``SHARDCACHE_NATIVE`` allows it: streaming stores for large copies, one vectorised pass for
widening. Otherwise ``memmove`` and numpy, which give the same bytes. The C widening is used
for a widening only after it gave, for every value the stored dtype can hold, the bits of
the numpy arithmetic that the build checked samples with (`exact`).
"""

from __future__ import annotations

import ctypes
import functools
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from . import settings

if TYPE_CHECKING:
    from .narrow import Widening

try:
    from . import _native  # type: ignore[attr-defined]
except ImportError:  # not built (no compiler where it was installed): memmove and numpy
    _native = None


def native() -> Any | None:
    """The C loops, or None when they were not built or ``SHARDCACHE_NATIVE=0``."""
    return _native if _native is not None and settings.native_enabled() else None


def _factor(widening: Widening) -> float:
    """What the C loop divides by, or multiplies with: the float32 numpy uses."""
    if widening.op == "div":
        return float(widening.scale)
    return float(np.float32(1.0 / widening.scale))


@functools.cache
def exact(widening: Widening) -> bool:
    """Whether the C loop widens every stored value of ``widening`` to numpy's bits."""
    loops = _native
    if loops is None or widening.served != "F32":
        return False
    stored = torch.arange(widening.table().numel()).to(widening.stored_dtype)
    out = torch.empty(stored.numel(), dtype=torch.float32)
    loops.widen(
        out.data_ptr(),
        stored.data_ptr(),
        stored.numel(),
        stored.element_size(),
        widening.op == "div",
        _factor(widening),
    )
    return torch.equal(out.view(torch.int32), widening.table().view(torch.int32))


class Loops:
    """The loops chosen once (``SHARDCACHE_NATIVE`` read once): take one per batch, not per row.

    Args:
        native: the C loops, or None for ``memmove`` and numpy.
    """

    def __init__(self, native: Any | None) -> None:
        self.native = native

    def copy(self, destination: int, source: int, nbytes: int) -> None:
        """Copy ``nbytes`` from address ``source`` to ``destination`` (one thread, no GIL)."""
        if self.native is not None:
            self.native.copy(destination, source, nbytes)
        else:
            ctypes.memmove(destination, source, nbytes)

    def widen(self, data: torch.Tensor, widening: Widening, out: torch.Tensor) -> None:
        """Write the served values of the narrow ``data`` into ``out`` (contiguous, CPU)."""
        if self.native is not None and exact(widening):
            self.native.widen(
                out.data_ptr(),
                data.data_ptr(),
                data.numel(),
                data.element_size(),
                widening.op == "div",
                _factor(widening),
            )
        else:
            widening.apply(data.numpy(), out.numpy())


def checks_in_c(widenings: tuple[Widening, Widening]) -> bool:
    """Whether `narrow_exact` may check these: the C widening of each is numpy's (`exact`)."""
    return all(map(exact, widenings))


def narrow_exact(
    loops: Any, values: torch.Tensor, out: torch.Tensor, widenings: tuple[Widening, Widening]
) -> tuple[bool, bool]:
    """The build's exactness check in one pass of the C ``loops`` (see `checks_in_c`).

    ``values``: flat contiguous float32; ``out``: the stored dtype, same length, given
    ``k = rint(value * scale)`` (float32, as numpy computes it); ``widenings``: the ``div``
    and the ``mul`` widening of one stored dtype and scale. Returns whether widening every
    ``k`` by each gives its value back bit for bit; ``out`` is usable only if one does.
    """
    division, multiplication = widenings
    return cast(
        tuple[bool, bool],
        loops.narrow(
            out.data_ptr(),
            values.data_ptr(),
            values.numel(),
            out.element_size(),
            float(division.scale),
            _factor(division),
            _factor(multiplication),
        ),
    )


def loops() -> Loops:
    """The loops to use now: C where built and allowed, else ``memmove`` and numpy."""
    return Loops(native())


def copy(destination: int, source: int, nbytes: int) -> None:
    """`Loops.copy` with the loops chosen now."""
    loops().copy(destination, source, nbytes)


def widen(data: torch.Tensor, widening: Widening, out: torch.Tensor) -> None:
    """`Loops.widen` with the loops chosen now."""
    loops().widen(data, widening, out)
