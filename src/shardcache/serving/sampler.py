"""Class-and-dataset balanced sampling, from labels only (never from decoded pixels)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

import torch
from torch.utils.data import WeightedRandomSampler

from ..core.errors import ConfigurationError

logger = logging.getLogger(__name__)


def balanced_weights(labels_per_dataset: Sequence[Sequence[int | None]]) -> list[float]:
    """Per-sample weights that make classes, and each concatenated dataset, equally likely.

    Within a dataset a sample weighs the inverse of its class count; each dataset's weights
    are then scaled to sum to ``1 / len(labels_per_dataset)``. Example: labels
    ``[[0]*9 + [1], [0]*3 + [1]*3]`` weigh 1/36 (class 0) and 1/4 (class 1) in the first
    dataset and 1/12 each in the second; each class is drawn with probability 0.5.

    Without integer labels everywhere, concatenated datasets are balanced by size alone;
    a single dataset without integer labels is an error.
    """
    if not labels_per_dataset or any(len(labels) == 0 for labels in labels_per_dataset):
        raise ConfigurationError("balanced sampling needs at least one sample in every dataset")
    share = 1.0 / len(labels_per_dataset)
    has_targets = all(
        isinstance(label, int) and not isinstance(label, bool)
        for labels in labels_per_dataset
        for label in labels
    )
    weights: list[float] = []
    if has_targets:
        for labels in labels_per_dataset:
            counts = Counter(labels)
            # Each class of this dataset sums to 1, so the dataset sums to len(counts).
            scale = share / len(counts)
            weights.extend(scale / counts[label] for label in labels)
        return weights
    if len(labels_per_dataset) == 1:
        raise ConfigurationError(
            "balance_sampler_by_class=True needs integer labels: raw_data_loader.label(item) "
            "must return an int for every training item"
        )
    logger.warning("no integer labels: balancing %d datasets by size only", len(labels_per_dataset))
    for labels in labels_per_dataset:
        weights.extend([share / len(labels)] * len(labels))
    return weights


def balanced_sampler(
    labels_per_dataset: Sequence[Sequence[int | None]],
    generator: torch.Generator | None = None,
) -> WeightedRandomSampler:
    """A sampler drawing with replacement, as many draws as samples, by `balanced_weights`."""
    weights = balanced_weights(labels_per_dataset)
    return WeightedRandomSampler(
        weights, num_samples=len(weights), replacement=True, generator=generator
    )
