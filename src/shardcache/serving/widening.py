"""Batches with `NarrowBatch` fields widened: on the device after a transfer, or on the host."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..core.narrow import NarrowBatch


def widen_batch(batch: Any) -> Any:
    """``batch`` with every `NarrowBatch` replaced by its float tensor, where its data lies."""
    if isinstance(batch, NarrowBatch):
        return batch.widen()
    if isinstance(batch, Mapping):
        return type(batch)({key: widen_batch(value) for key, value in batch.items()})  # type: ignore[call-arg]
    if isinstance(batch, list | tuple):
        widened = [widen_batch(value) for value in batch]
        if isinstance(batch, list):
            return widened
        return type(batch)(*widened) if hasattr(batch, "_fields") else type(batch)(widened)
    return batch
