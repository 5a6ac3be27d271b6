"""The tensor dtypes a shard can hold, with their safetensors codes."""

from __future__ import annotations

import torch

SAFETENSORS_CODES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.uint16: "U16",
    torch.uint32: "U32",
    torch.uint64: "U64",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
    torch.complex64: "C64",
}
DTYPES_BY_CODE = {code: dtype for dtype, code in SAFETENSORS_CODES.items()}


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major strides of ``shape``, as ``torch.empty(shape).stride()`` gives them."""
    strides = [1] * len(shape)
    for axis in range(len(shape) - 2, -1, -1):
        strides[axis] = strides[axis + 1] * max(shape[axis + 1], 1)
    return tuple(strides)


def view_of(
    storage: torch.UntypedStorage,
    offset: int,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    stride: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """A tensor over ``storage`` from element ``offset``: no copy (contiguous by default)."""
    strides = contiguous_strides(shape) if stride is None else stride
    return torch.empty(0, dtype=dtype).set_(storage, offset, shape, strides)
