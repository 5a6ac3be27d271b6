"""The peers benchmark's workload: deterministic float32 samples, the same for every system.

Sample ``i`` is smooth structure (a sum of separable sinusoids with seeded frequencies and
phases) plus seeded noise, ``float32 [1, 512, 512]`` (1 MiB) by default. Only elementwise
NumPy operations make it, so every process computes the same bits. Labels are two classes,
70/30, spread by a seeded permutation.

It lives in a module file because shardcache's cache key hashes the raw loader's class
source (`SyntheticTensorLoader`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

SEED = 0
POSITIVE_FRACTION = 0.3
SHAPE = (1, 512, 512)


@dataclass(frozen=True)
class Workload:
    """What defines the samples: count, shape and seed (all systems write the same)."""

    count: int
    shape: tuple[int, int, int] = SHAPE
    seed: int = SEED

    @property
    def sample_bytes(self) -> int:
        """Bytes of one float32 sample."""
        channels, height, width = self.shape
        return channels * height * width * 4

    def labels(self) -> list[int]:
        """Class of every sample: exactly round(0.3 * count) ones, at seeded places."""
        rng = np.random.default_rng([self.seed, 1])
        result = [0] * self.count
        for position in rng.permutation(self.count)[: round(POSITIVE_FRACTION * self.count)]:
            result[int(position)] = 1
        return result

    def items(self) -> list[list[int]]:
        """The split items for shardcache: ``[index, label]``."""
        return [[index, label] for index, label in enumerate(self.labels())]

    def array(self, index: int) -> np.ndarray:
        """The float32 pixels of sample ``index``."""
        return sample_array(self.seed, self.shape, index)

    def tensor(self, index: int) -> torch.Tensor:
        """Sample ``index`` as a tensor (the reference that every system must return)."""
        return torch.from_numpy(self.array(index))


def sample_array(seed: int, shape: tuple[int, int, int], index: int) -> np.ndarray:
    """The float32 pixels of sample ``index`` (elementwise operations only: reproducible)."""
    channels, height, width = shape
    rng = np.random.default_rng([seed, 2, index])
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)
    planes = []
    for _ in range(channels):
        plane = np.zeros((height, width), dtype=np.float32)
        for _ in range(4):
            fy, fx = rng.uniform(1.0, 12.0, 2).astype(np.float32)
            py, px = rng.uniform(0.0, 6.28, 2).astype(np.float32)
            amplitude = np.float32(rng.uniform(0.05, 0.25))
            plane += np.outer(amplitude * np.sin(fy * y + py), np.cos(fx * x + px))
        plane += 0.5 + 0.02 * rng.standard_normal((height, width), dtype=np.float32)
        planes.append(plane)
    return np.stack(planes)


class SyntheticTensorLoader:
    """A shardcache raw data loader that generates the workload's samples.

    Items are ``[index, label]``; the metadata is ``{"label": label, "index": index}`` (the
    peers store the same two fields beside the tensor).
    """

    def __init__(self, shape: tuple[int, int, int] = SHAPE, seed: int = SEED) -> None:
        self.shape = list(shape)
        self.seed = seed

    def sample(self, item: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        """Generate sample ``item[0]``."""
        index, label = item
        pixels = sample_array(self.seed, tuple(self.shape), int(index))  # type: ignore[arg-type]
        return torch.from_numpy(pixels), {"label": int(label), "index": int(index)}

    def label(self, item: Any) -> int:
        """The class of ``item``, from the item itself."""
        return int(item[1])


def litdata_sample(job: list[Any]) -> dict[str, Any]:
    """LitData ``optimize`` function: one ``[seed, shape, index, label]`` job to a sample."""
    seed, shape, index, label = job
    x = torch.from_numpy(sample_array(seed, tuple(shape), index))
    return {"x": x, "y": label, "i": index}
