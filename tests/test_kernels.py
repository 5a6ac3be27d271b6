"""The C loops that copy and widen batches: built, exact, and interchangeable with numpy's.

``make venv`` builds ``shardcache.core._native``; without it shardcache copies with memmove
and widens with numpy. Both must give the same bytes, for every value a narrow tensor can
store, aligned or not, short or long (the vector loops' head and tail).
"""

from __future__ import annotations

import pytest
import torch

from shardcache.core import kernels
from shardcache.core.narrow import Widening
from shardcache.store import codec

WIDENINGS = [
    Widening(stored, "F32", scale, op)
    for stored, scale in (("U8", 255), ("U16", 65535), ("U8", 1), ("U16", 1))
    for op in ("div", "mul")
]


def test_the_c_loops_are_built_here() -> None:
    # make venv builds them with this machine's compiler: a missing build is a setup defect.
    assert kernels.native() is not None


@pytest.mark.parametrize("widening", WIDENINGS, ids=str)
def test_widening_in_c_gives_numpys_bits_for_every_stored_value(widening: Widening) -> None:
    assert kernels.exact(widening)


@pytest.mark.parametrize("offset", [0, 1, 3, 7])
@pytest.mark.parametrize("count", [1, 7, 8, 9, 100, 65_537])
@pytest.mark.parametrize("widening", WIDENINGS[:4], ids=str)
def test_c_and_numpy_widen_alike_at_any_alignment_and_length(
    widening: Widening, count: int, offset: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    high = 256 if widening.stored == "U8" else 65536
    stored = torch.randint(0, high, (count,), dtype=torch.int64).to(widening.stored_dtype)
    buffers = [torch.zeros(count + offset) for _ in range(2)]
    outs = [buffer[offset:] for buffer in buffers]  # destinations off 32-byte alignment
    kernels.widen(stored, widening, outs[0])
    monkeypatch.setenv("SHARDCACHE_NATIVE", "0")
    kernels.widen(stored, widening, outs[1])
    assert torch.equal(buffers[0].view(torch.int32), buffers[1].view(torch.int32))


@pytest.mark.parametrize("nbytes", [0, 1, 33, 64 << 10, (64 << 10) + 5, 3 << 20])
@pytest.mark.parametrize("offset", [0, 3])
def test_copy_moves_every_byte(nbytes: int, offset: int) -> None:
    source = torch.randint(0, 256, (nbytes + offset,), dtype=torch.uint8)
    destination = torch.zeros(nbytes + 2 * offset + 64, dtype=torch.uint8)
    kernels.copy(destination.data_ptr() + offset, source.data_ptr() + offset, nbytes)
    assert torch.equal(destination[offset : offset + nbytes], source[offset : offset + nbytes])
    assert not destination[offset + nbytes :].any()  # nothing written past the end
    assert not destination[:offset].any()


def test_memmove_is_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARDCACHE_NATIVE", "0")
    assert kernels.native() is None
    source = torch.arange(10, dtype=torch.uint8)
    destination = torch.zeros(10, dtype=torch.uint8)
    kernels.copy(destination.data_ptr(), source.data_ptr(), 10)
    assert torch.equal(destination, source)


# ---- the build's narrowing check ------------------------------------------------------------

SPECIALS = [float("nan"), float("inf"), -float("inf"), -0.0, -1 / 255, 256 / 255, 1e-45, 0.3]
"""Values no candidate stores exactly (-0.0 would come back +0.0; 0.3 is no k / 255)."""


def narrowable(stored: str, scale: int, op: str, count: int) -> torch.Tensor:
    """``count`` float32 values that ``k / scale`` (or ``k * (1 / scale)``) gives exactly."""
    high = 256 if stored == "U8" else 65536
    k = torch.randint(0, high, (count,)).to(torch.float32)
    return k.div_(scale) if op == "div" else k.mul_(float(torch.tensor(1 / scale)))


def narrowed_both_ways(values: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """`codec.narrow` of ``values`` with the C check and with numpy's: (data, widening) each."""
    results = []
    for native in ("1", "0"):
        monkeypatch.setenv("SHARDCACHE_NATIVE", native)
        found = codec.narrow(values)
        results.append(None if found is None else (found.data.tolist(), found.widening))
    return results


@pytest.mark.parametrize("offset", [0, 1, 5])
@pytest.mark.parametrize("count", [1024, 1031, 5000])
@pytest.mark.parametrize("widening", WIDENINGS, ids=str)
def test_c_and_numpy_narrow_alike(
    widening: Widening, count: int, offset: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = narrowable(widening.stored, widening.scale, widening.op, count + offset)[offset:]
    in_c, in_numpy = narrowed_both_ways(values, monkeypatch)
    assert in_c == in_numpy
    assert in_c is not None  # exact data is narrowed...
    data, found = in_c  # type: ignore[misc]
    served = torch.empty(count)
    kernels.widen(torch.tensor(data, dtype=found.stored_dtype), found, served)
    assert torch.equal(served.view(torch.int32), values.view(torch.int32))  # ...bit for bit


@pytest.mark.parametrize("special", SPECIALS)
@pytest.mark.parametrize("position", [0, 9, 1029])  # in the vector loop or its scalar tail
def test_c_and_numpy_refuse_alike(
    special: float, position: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = narrowable("U8", 255, "div", 1030)
    values[position] = special
    in_c, in_numpy = narrowed_both_ways(values, monkeypatch)
    assert in_c == in_numpy
    assert in_c is None  # one value that no candidate gives back keeps the tensor float
