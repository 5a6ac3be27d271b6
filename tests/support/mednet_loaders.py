"""A mednet 2.x raw data loader over PNG files of our own, and the files.

`PngLoader` is what mednet's database loaders are (montgomery's, for one): PIL decode,
``to_image``, ``to_dtype(float32, scale=True)``, a ``tv_tensors.Image``, a float target, the
name; ``target()`` without decoding. Each decode is logged (`support.decodes`), and the log
path is a private attribute the cache key ignores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from mednet.data.typing import RawDataLoader
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms.v2.functional import to_dtype, to_image

from .decodes import record_decode


class PngLoader(RawDataLoader):
    """mednet-style loader of ``[relative path, label]`` items under ``root``."""

    shardcache_key_ignores = ("_log",)

    def __init__(self, root: str | Path, log: str | Path) -> None:
        self.root = Path(root)
        self._log = str(log)

    def sample(self, item: Any) -> dict[str, Any]:
        record_decode(self._log, item)
        image = to_dtype(to_image(Image.open(self.root / item[0])), torch.float32, scale=True)
        return {"image": tv_tensors.Image(image), "target": self.target(item), "name": item[0]}

    def target(self, item: Any) -> torch.Tensor:
        return torch.FloatTensor([item[1]])


def write_pngs(root: Path, count: int, side: int = 24) -> list[list[Any]]:
    """``count`` grey PNGs of ``side`` x ``side`` under ``root``; their ``[path, label]`` items."""
    items = []
    rng = np.random.default_rng(0)
    for index in range(count):
        name = f"img/{index:03d}.png"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=(side, side + index % 3), dtype=np.uint8)
        Image.fromarray(pixels, mode="L").save(root / name)
        items.append([name, index % 2])
    return items
