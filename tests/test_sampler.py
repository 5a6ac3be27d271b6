"""Class-and-dataset balanced sampling: the worked example, frequencies and the fallbacks."""

from __future__ import annotations

import logging
from collections import Counter
from fractions import Fraction

import pytest
import torch
from torch.utils.data import WeightedRandomSampler

from shardcache import ConfigurationError
from shardcache.serving.sampler import balanced_sampler, balanced_weights

# DESIGN.md's example: 9 of class 0 and 1 of class 1, then 3 and 3.
FIRST = [0] * 9 + [1]
SECOND = [0] * 3 + [1] * 3


def draws(sampler: WeightedRandomSampler, epochs: int) -> list[int]:
    return [index for _ in range(epochs) for index in sampler]


def test_worked_example_weights() -> None:
    weights = balanced_weights([FIRST, SECOND])
    expected = [Fraction(1, 36)] * 9 + [Fraction(1, 4)] + [Fraction(1, 12)] * 6
    assert weights == pytest.approx([float(w) for w in expected])
    assert sum(weights) == pytest.approx(1.0)


def test_worked_example_draws_each_class_and_dataset_half_the_time() -> None:
    sampler = balanced_sampler([FIRST, SECOND], generator=torch.Generator().manual_seed(0))
    assert sampler.replacement
    assert sampler.num_samples == 16  # as many draws as samples
    drawn = draws(sampler, 1000)
    labels = FIRST + SECOND
    classes = Counter(labels[i] for i in drawn)
    datasets = Counter(i < len(FIRST) for i in drawn)
    assert classes[1] / len(drawn) == pytest.approx(0.5, abs=0.02)
    assert datasets[True] / len(drawn) == pytest.approx(0.5, abs=0.02)
    # The rare sample of the first dataset is drawn a quarter of the time on its own.
    assert drawn.count(9) / len(drawn) == pytest.approx(0.25, abs=0.02)


def test_seeded_sampler_repeats_its_draws() -> None:
    first = balanced_sampler([FIRST, SECOND], generator=torch.Generator().manual_seed(7))
    second = balanced_sampler([FIRST, SECOND], generator=torch.Generator().manual_seed(7))
    assert draws(first, 3) == draws(second, 3)


def test_single_dataset_balances_classes() -> None:
    assert balanced_weights([[0, 0, 0, 1]]) == pytest.approx([1 / 6, 1 / 6, 1 / 6, 1 / 2])
    assert balanced_weights([[2, 5, 5]]) == pytest.approx([1 / 2, 1 / 4, 1 / 4])


@pytest.mark.parametrize(
    "labels",
    [[[None] * 4, [None] * 2], [[0, 1, 1, None], ["a", "b"]]],
    ids=["no-labels", "some-not-integers"],
)
def test_concatenated_datasets_without_integer_labels_balance_by_size(
    labels: list[list[object]], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="shardcache.serving.sampler"):
        weights = balanced_weights(labels)  # type: ignore[arg-type]
    assert weights == pytest.approx([1 / 8] * 4 + [1 / 4] * 2)
    assert "no integer labels: balancing 2 datasets by size only" in caplog.text


@pytest.mark.parametrize("labels", [[None, None], [0, "x"], [0, None]])
def test_single_dataset_without_integer_labels_is_an_error(labels: list[object]) -> None:
    with pytest.raises(ConfigurationError, match=r"needs integer labels: raw_data_loader.label"):
        balanced_sampler([labels])  # type: ignore[list-item]


@pytest.mark.parametrize("labels", [[], [[]], [[0, 1], []]], ids=["none", "empty", "one-empty"])
def test_empty_datasets_are_an_error(labels: list[list[int]]) -> None:
    with pytest.raises(ConfigurationError, match=r"at least one sample in every dataset"):
        balanced_weights(labels)
