"""Deterministic synthetic "medical-like" images and a mednet-style JSON split.

Each image is smooth structure (an elliptic body with soft edges, a few Gaussian
"organs", an illumination gradient) plus Gaussian noise, so that PNG compresses it to
about half of its raw size: decoding costs what it costs on real scans, unlike blank or
pure-noise images. Class 1 (30% of the images by default) carries a small bright
"lesion". The same parameters always give the same bytes.

Layout of one data set, reused by later runs and regenerated when a parameter changes::

    <data_dir>/<params-hash>/
      img/00000.png ...     train images first, then validation images
      split.json            {"train": [["img/00000.png", 0], ...], "validation": [...]}
      params.json           the parameters and what was generated (sizes, compression)

Run ``python -m benchmarks.synthetic --help`` to generate one by hand.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import numpy as np

GENERATOR_VERSION = 1
"""Bump when the pixels change, so that old data sets are not reused."""

NOISE_SIGMA = 0.012
"""Noise standard deviation (of a [0, 1] image): PNG then compresses to about 50%."""

PARALLEL_THRESHOLD = 128
"""Below this many images, generate in-process (a worker pool costs more than it saves)."""


@dataclass(frozen=True)
class SyntheticParams:
    """What defines a synthetic data set; its hash names the directory.

    Attributes:
        count: train images (the benchmark's N).
        size: height and width in pixels.
        mode: ``"gray"`` (1 channel) or ``"rgb"`` (3 channels).
        image_format: ``"png"`` or ``"jpeg"``.
        validation: validation images (default: count // 8, at least 1).
        positive_fraction: share of class-1 images (the rest are class 0).
        seed: seed of every random choice.
        jpeg_quality: JPEG quality, for ``image_format="jpeg"``.
    """

    count: int = 2000
    size: int = 512
    mode: Literal["gray", "rgb"] = "gray"
    image_format: Literal["png", "jpeg"] = "png"
    validation: int | None = None
    positive_fraction: float = 0.3
    seed: int = 0
    jpeg_quality: int = 90
    generator_version: int = field(default=GENERATOR_VERSION)

    def __post_init__(self) -> None:
        if self.count < 1 or self.size < 8:
            raise ValueError(f"count={self.count}, size={self.size}: need count >= 1, size >= 8")
        if self.mode not in {"gray", "rgb"} or self.image_format not in {"png", "jpeg"}:
            raise ValueError(f"mode={self.mode!r}, image_format={self.image_format!r}")

    @property
    def validation_count(self) -> int:
        """Validation images generated after the train images."""
        return self.validation if self.validation is not None else max(1, self.count // 8)

    @property
    def channels(self) -> int:
        """Channels of a decoded image."""
        return 1 if self.mode == "gray" else 3

    @property
    def suffix(self) -> str:
        """The image files' extension."""
        return ".png" if self.image_format == "png" else ".jpg"

    def digest(self) -> str:
        """A short hash of every parameter: the data set's directory name."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def class_labels(params: SyntheticParams, total: int) -> list[int]:
    """Class of each image: exactly round(fraction * n) ones per subset, spread at random."""
    rng = np.random.default_rng([params.seed, 1])
    result = [0] * total
    for start, stop in ((0, params.count), (params.count, total)):
        n = stop - start
        positives = rng.permutation(n)[: round(params.positive_fraction * n)]
        for position in positives:
            result[start + int(position)] = 1
    return result


def image(params: SyntheticParams, index: int, label: int) -> np.ndarray:
    """The uint8 [C, H, W] pixels of image ``index``."""
    rng = np.random.default_rng([params.seed, 2, index])
    axis = np.linspace(-1.0, 1.0, params.size, dtype=np.float32)
    y, x = axis[:, None], axis[None, :]
    width, height = rng.uniform(0.6, 0.9, 2)
    radius = np.sqrt((x / width) ** 2 + (y / height) ** 2)
    inside = radius < 1.05
    body = 0.45 / (1.0 + np.exp((radius - 1.0) * 25.0))
    tilt = rng.uniform(-1.0, 1.0, 2)
    base = body + 0.05 + 0.05 * (tilt[0] * x + tilt[1] * y)

    def blob(cx: float, cy: float, sigma: float, amplitude: float) -> np.ndarray:
        # Separable: the outer product of two 1-D Gaussians costs one multiply per pixel.
        gx = np.exp(-((axis - cx) ** 2) / (2.0 * sigma * sigma))
        gy = np.exp(-((axis - cy) ** 2) / (2.0 * sigma * sigma))
        return np.outer(amplitude * gy, gx).astype(np.float32)

    for _ in range(int(rng.integers(3, 7))):
        cx, cy = rng.uniform(-0.5, 0.5, 2)
        base += blob(cx, cy, rng.uniform(0.05, 0.25), rng.uniform(-0.25, 0.35)) * inside
    if label == 1:
        cx, cy = rng.uniform(-0.4, 0.4, 2)
        base += blob(cx, cy, rng.uniform(0.02, 0.04), 0.3)
    tints = (1.0,) if params.channels == 1 else (1.0, 0.85, 0.7)
    planes = []
    for tint in tints:
        noise = rng.standard_normal(base.shape, dtype=np.float32) * NOISE_SIGMA
        planes.append(np.clip(base * tint + noise, 0.0, 1.0))
    return (np.stack(planes) * 255.0 + 0.5).astype(np.uint8)


def _write_images(params: SyntheticParams, directory: str, jobs: Sequence[tuple[int, int]]) -> int:
    """Encode and write ``(index, label)`` images; returns the bytes written."""
    import torch
    from torchvision.io import encode_jpeg, encode_png, write_file

    written = 0
    for index, label in jobs:
        pixels = torch.from_numpy(image(params, index, label))
        if params.image_format == "png":
            data = encode_png(pixels, compression_level=6)
        else:
            data = encode_jpeg(pixels, quality=params.jpeg_quality)
        write_file(str(Path(directory) / image_name(params, index)), data)
        written += int(data.numel())
    return written


def split_text(split: dict[str, list[Any]]) -> str:
    """The split as JSON with one item per line (readable, and diffs well)."""
    subsets = [
        f"  {json.dumps(name)}: [\n"
        + ",\n".join(f"    {json.dumps(item)}" for item in items)
        + "\n  ]"
        for name, items in split.items()
    ]
    return "{\n" + ",\n".join(subsets) + "\n}\n"


def image_name(params: SyntheticParams, index: int) -> str:
    """The image's path relative to the data set directory."""
    return f"img/{index:05d}{params.suffix}"


@dataclass(frozen=True)
class SyntheticDataset:
    """A generated data set on disk."""

    root: Path
    params: SyntheticParams
    info: dict[str, Any]

    @property
    def split_path(self) -> Path:
        """The mednet-style JSON split file."""
        return self.root / "split.json"


def ensure_dataset(
    params: SyntheticParams, data_dir: str | os.PathLike[str], *, workers: int = 2
) -> SyntheticDataset:
    """The data set of ``params`` under ``data_dir``, generated first when it is missing.

    Generation happens in a temporary directory renamed into place at the end, so an
    interrupted run leaves nothing that a later run would mistake for a complete set.
    """
    base = Path(data_dir)
    root = base / params.digest()
    info_path = root / "params.json"
    if info_path.is_file():
        return SyntheticDataset(root, params, json.loads(info_path.read_text()))
    base.mkdir(parents=True, exist_ok=True)
    staging = base / f".tmp-{params.digest()}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "img").mkdir(parents=True)
    total = params.count + params.validation_count
    classes = class_labels(params, total)
    jobs = list(enumerate(classes))
    started = time.perf_counter()
    if total < PARALLEL_THRESHOLD or workers <= 1:
        encoded = _write_images(params, str(staging), jobs)
    else:
        # spawn, not fork: the parent may already run torch's thread pools.
        chunks = [jobs[i::workers] for i in range(workers)]
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            encoded = sum(
                pool.map(_write_images, [params] * workers, [str(staging)] * workers, chunks)
            )
    items = [[image_name(params, index), label] for index, label in jobs]
    split = {"train": items[: params.count], "validation": items[params.count :]}
    (staging / "split.json").write_text(split_text(split))
    raw = total * params.channels * params.size * params.size
    info = {
        "params": asdict(params),
        "images": total,
        "encoded_bytes": encoded,
        "raw_uint8_bytes": raw,
        "compression": round(encoded / raw, 3),
        "positives_train": sum(classes[: params.count]),
        "generation_s": round(time.perf_counter() - started, 2),
    }
    (staging / "params.json").write_text(json.dumps(info, indent=2) + "\n")
    staging.rename(root)
    return SyntheticDataset(root, params, info)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="bench-data")
    parser.add_argument("--items", type=int, default=2000, help="train images (N)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--mode", choices=["gray", "rgb"], default="gray")
    parser.add_argument("--format", dest="image_format", choices=["png", "jpeg"], default="png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    params = SyntheticParams(
        count=args.items,
        size=args.size,
        mode=args.mode,
        image_format=args.image_format,
        seed=args.seed,
    )
    dataset = ensure_dataset(params, args.data_dir)
    print(f"{dataset.root}: {json.dumps(dataset.info)}")


if __name__ == "__main__":
    main()
