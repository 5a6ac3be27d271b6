"""Transforms applied to a sample's tensors, on a copy.

Model transforms (``CachingDataModule(model_transforms=...)``) are applied to each served
sample and never cached; ``ensure_cache(transforms=...)`` applies transforms once, before a
build stores each sample (they are then part of the cache key).

What a transform receives: the tensor of a ``(tensor, metadata)`` pair; in a dict sample,
each ``tv_tensors`` value (images, masks, boxes: torchvision's v2 transforms treat each by
its class), as mednet applies its model transforms.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .errors import ConfigurationError
from .types import Sample, Transform


def _is_tv_tensor(value: object) -> bool:
    return isinstance(value, torch.Tensor) and type(value).__module__.startswith(
        "torchvision.tv_tensors"
    )


def transform_sample(sample: Sample, transforms: Sequence[Transform]) -> Sample:
    """``sample`` with ``transforms`` applied in order to copies of what they transform."""

    def apply(tensor: torch.Tensor) -> torch.Tensor:
        # A copy, so an in-place transform (x.add_(1)) changes this sample only.
        result = tensor.clone()
        for transform in transforms:
            result = transform(result)
        return result

    if isinstance(sample, tuple):
        tensor, metadata = sample
        return apply(tensor), metadata
    targets = [key for key, value in sample.items() if _is_tv_tensor(value)]
    if not targets:
        raise ConfigurationError(
            "transforms apply to the tensor of a (Tensor, dict) sample, or to the "
            f"tv_tensors values of a dict sample; this sample has none (keys: {list(sample)})"
        )
    transformed: dict[str, Any] = dict(sample)
    for key in targets:
        transformed[key] = apply(sample[key])
    return transformed
