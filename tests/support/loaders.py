"""The test raw loaders, the split items they read, and the samples they must give.

Loaders live in this module file, not in tests, because the disk tier's cache key hashes a
loader's class source (and its bases') and names its module: every process, DataLoader
workers and child builds included, must import them from the same file as
``support.loaders``. Settings that do not change the samples (the decode log, a delay, a
crash point) are private attributes (``_log``, ``_count_file``, ``_delay``...), so that they
stay out of the key. Each decode is logged with `support.decodes.record_decode`.

The families: `ValueLoader` and kin for the DataModule tests (a sample is filled with its
item's value); `SeededLoader`, `DictImageLoader`, `FingerprintLoader`, `RichLoader` and
`AttributeLoader` for the store tests; `SlowLoader`, `SizedLoader` and `BadLoader` for the
fault tests (samples are `reference_sample`); `TinyLoader` for the CLI tests.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .crash import CRASH_EXIT
from .decodes import record_decode
from .samples import samples_digest

N_ITEMS = 40
"""The fault tests' split size: a build of it with ``builds.SHARD_BYTES`` writes a dozen shards."""


def make_items(count: int = N_ITEMS, prefix: str = "img") -> list[list[Any]]:
    """Split items as a mednet-style JSON protocol file has them: ``["img/0003.png", label]``."""
    return [[f"{prefix}/{index:04d}.png", index % 3] for index in range(count)]


def item_index(item: Any) -> int:
    """The number in a `make_items` item's name."""
    return int(re.search(r"(\d+)\.png$", item[0])[1])  # type: ignore[index]


# ---- unusable samples -------------------------------------------------------------------

OPEN_FILES: list[Any] = []
"""Files the ``open_file`` mode opened in this process, for the test to close."""


def unusable_sample(mode: str, item: Any, tensor: torch.Tensor, metadata: dict[str, Any]) -> Any:
    """What a broken loader returns for ``item`` instead of ``(tensor, metadata)``.

    Not a pair: ``list`` (a list of floats), ``non_pair`` (the bare tensor). A bad sample:
    ``tensor`` (the tensor as a list), ``non_tensor`` (an int). Bad metadata: ``metadata``
    (a list of pairs), ``non_dict`` (a string), ``open_file`` (an open file object as a
    value). ``raises``: the loader raises ``FileNotFoundError``.
    """
    if mode == "list":
        return [1.0, 2.0, 3.0]
    if mode == "non_pair":
        return tensor
    if mode == "tensor":
        return tensor.tolist(), metadata
    if mode == "non_tensor":
        return 1234, metadata
    if mode == "metadata":
        return tensor, list(metadata.items())
    if mode == "non_dict":
        return tensor, "label=1"
    if mode == "open_file":
        handle = Path(os.devnull).open()  # noqa: SIM115 (the unstorable value itself)
        OPEN_FILES.append(handle)
        return tensor, {**metadata, "handle": handle}
    if mode == "raises":
        raise FileNotFoundError(f"no such file: {item[0]}")
    raise AssertionError(mode)


# ---- the DataModule tests: items [name, label, value] -------------------------------------


class ValueLoader:
    """``sample([name, label, value])`` is a [1, 2, 2] float tensor of ``value``."""

    shardcache_key_ignores = ("_log",)

    def __init__(self, log: str | Path) -> None:
        self._log = str(log)

    def sample(self, item: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        record_decode(self._log, item)
        name, label, value = item
        return torch.full((1, 2, 2), float(value)), {"name": name, "label": label, "value": value}

    def label(self, item: Any) -> int:
        return int(item[1])


class TextLabelLoader(ValueLoader):
    """A loader whose ``label()`` is no integer: balancing by class cannot use it."""

    def label(self, item: Any) -> Any:
        return f"class-{item[1]}"


class BadValueLoader(ValueLoader):
    """An `unusable_sample` of ``mode`` for the items whose value is in ``bad``."""

    def __init__(self, log: str | Path, mode: str, bad: list[int]) -> None:
        super().__init__(log)
        self.mode = mode
        self.bad = bad

    def sample(self, item: Any) -> Any:
        tensor, metadata = super().sample(item)
        if item[2] not in self.bad:
            return tensor, metadata
        return unusable_sample(self.mode, item, tensor, metadata)


# ---- the store tests ----------------------------------------------------------------------


def _generator(item: Any) -> torch.Generator:
    text = json.dumps(item, sort_keys=True).encode()
    seed = int.from_bytes(hashlib.sha256(text).digest()[:7], "little")
    return torch.Generator().manual_seed(seed)


class SeededLoader:
    """Float32 ``[1, side, side]`` random samples seeded by the item, times ``scale``.

    Metadata is collatable (``label`` int, ``name`` str), so DataModule loaders batch it.
    """

    shardcache_key_ignores = ("_log", "_delay")

    def __init__(
        self, log: str | Path, scale: float = 1.0, side: int = 8, delay: float = 0.0
    ) -> None:
        self._log = str(log)
        self._delay = delay
        self.scale = scale
        self.side = side

    def sample(self, item: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        record_decode(self._log, item)
        if self._delay:
            time.sleep(self._delay)
        tensor = torch.randn(1, self.side, self.side, generator=_generator(item)) * self.scale
        return tensor, {"label": item[1], "name": item[0]}

    def label(self, item: Any) -> int:
        return int(item[1])


class DictImageLoader:
    """mednet-like dict samples: an 8-bit ``tv_tensors.Image`` scaled to floats (stored
    narrow by the disk tier), a float ``target`` and a name; ``target()``, no ``label()``."""

    shardcache_key_ignores = ("_log",)

    def __init__(self, log: str | Path, side: int = 8) -> None:
        self._log = str(log)
        self.side = side

    def sample(self, item: Any) -> dict[str, Any]:
        from torchvision import tv_tensors

        record_decode(self._log, item)
        shape = (1, self.side, self.side)
        pixels = torch.randint(0, 256, shape, generator=_generator(item), dtype=torch.uint8)
        image = tv_tensors.Image(pixels.to(torch.float32).div_(255))
        return {"image": image, "target": self.target(item), "name": item[0]}

    def target(self, item: Any) -> torch.Tensor:
        return torch.tensor([float(item[1] % 2)])


class FingerprintLoader(SeededLoader):
    """States its identity with ``fingerprint()``; its other attributes do not count."""

    def __init__(self, log: str | Path, version: str, scale: float = 1.0) -> None:
        super().__init__(log, scale=scale)
        self.version = version
        self.postprocess = lambda x: x  # not JSON: fine, since fingerprint() is used

    def fingerprint(self) -> str:
        return f"synthetic-v{self.version}"


KINDS = ("uint8", "float16", "bfloat16", "int64", "bool", "float32")


def rich_items(count: int) -> list[dict[str, Any]]:
    """Dict items cycling through sample dtypes."""
    return [{"id": index, "kind": KINDS[index % len(KINDS)]} for index in range(count)]


def special_floats() -> torch.Tensor:
    """NaN, infinities, -0.0, a subnormal and a NaN with a payload: bits that must survive."""
    payload_nan = torch.tensor([0x7FC0_1234], dtype=torch.int32).view(torch.float32)
    values = torch.tensor([math.nan, math.inf, -math.inf, -0.0, 1e-45, 3.5])
    return torch.cat([values, payload_nan])


class RichLoader:
    """Samples of several shapes and dtypes with tensor and nested JSON metadata."""

    shardcache_key_ignores = ("_log",)

    def __init__(self, log: str | Path) -> None:
        self._log = str(log)

    def sample(self, item: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        record_decode(self._log, item)
        index, kind = item["id"], item["kind"]
        generator = _generator(item)
        shape = (1 + index % 3, 2 + index % 4, 3)
        floats = torch.randn(shape, generator=generator) * 100
        if kind == "uint8":
            tensor = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
        elif kind == "float16":
            tensor = floats.to(torch.float16)
        elif kind == "bfloat16":
            tensor = floats.to(torch.bfloat16)
        elif kind == "int64":
            tensor = torch.randint(-(2**62), 2**62, shape, generator=generator, dtype=torch.int64)
        elif kind == "bool":
            tensor = floats > 0
        else:
            tensor = floats.reshape(-1)
            tensor[: len(special_floats())] = special_floats()
            tensor = tensor.reshape(shape)
        metadata: dict[str, Any] = {
            "label": index % 2,
            "name": f"sample-{index}",
            "mask": torch.rand(shape[1:], generator=generator) > 0.5,
            "score": index / 3,
            "counts": torch.arange(index + 1, dtype=torch.int32).reshape(1, -1),
            "flag": index % 2 == 0,
            "missing": None,
            "big": 2**53 + 1,
            "whole_float": 2.0,
            "nested": {
                "ints": [1, -7, 0],
                "mixed": [1.5, "x", None, True, {"deep": []}],
                "empty": {},
            },
            "extremes": [math.inf, -math.inf, math.nan, -0.0],
            "text": 'ümlaut ✓ "quoted" \\ back',
        }
        return tensor, metadata

    def label(self, item: dict[str, Any]) -> int:
        return int(item["id"]) % 2


class AttributeLoader:
    """A loader whose public attributes are whatever the test gives it (for key tests)."""

    def __init__(self, /, **attributes: Any) -> None:
        self.__dict__.update(attributes)

    def sample(self, item: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        return torch.zeros(1), {}

    def label(self, item: Any) -> int:
        return 0


# ---- the fault tests: items from make_items -----------------------------------------------


def reference_sample(item: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    """The sample of ``item``, a pure function of it: what every cache must serve, bitwise."""
    index = item_index(item)
    generator = torch.Generator().manual_seed(7919 * index + 17)
    rows = 6 + index % 5
    tensor = torch.randn(1, rows, 16, generator=generator)
    if index % 7 == 3:  # values that must survive bit for bit
        tensor[0, 0, :4] = torch.tensor([float("nan"), float("inf"), float("-inf"), -0.0])
    mask = (torch.rand(rows, 16, generator=generator) > 0.5).to(torch.uint8)
    metadata: dict[str, Any] = {
        "label": item[1],
        "name": item[0],
        "mask": mask,
        "score": index / 3,
        "tags": [item[0], index, None],
    }
    if index % 5 == 0:
        metadata["nan"] = float("nan")
        metadata["counts"] = torch.arange(index + 1, dtype=torch.int64)
    return tensor, metadata


def reference_digest(items: Sequence[Any], sample: Any = reference_sample) -> str:
    """What `support.samples.dataset_digest` gives for a correct cache of ``items``."""
    return samples_digest(map(sample, items), [item[1] for item in items])


class SlowLoader:
    """`reference_sample` with a short sleep per decode, so that builds last long enough.

    Args:
        count_file: where each decode is logged.
        tag: the run's name in that log.
        delay: seconds of sleep per decode.
        crash_at_decode: ``os._exit(CRASH_EXIT)`` at this decode of this process (0: never).
    """

    shardcache_key_ignores = ("_count_file", "_tag", "_delay", "_crash_at_decode", "_decoded")

    def __init__(
        self, count_file: str | Path, tag: str = "run", delay: float = 0.0, crash_at_decode: int = 0
    ) -> None:
        self._count_file = str(count_file)
        self._tag = tag
        self._delay = delay
        self._crash_at_decode = crash_at_decode
        self._decoded = 0

    def sample(self, item: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        self._decoded += 1
        record_decode(self._count_file, item, self._tag)
        if self._decoded == self._crash_at_decode:
            os._exit(CRASH_EXIT)
        if self._delay:
            time.sleep(self._delay)
        return reference_sample(item)

    def label(self, item: Any) -> int:
        return int(item[1])


def sized_sample(item: Any, small: int, large: int, switch_at: int) -> tuple[torch.Tensor, dict]:
    """A float32 sample of ``small`` bytes before index ``switch_at``, ``large`` from there."""
    index = item_index(item)
    nbytes = small if index < switch_at else large
    tensor = (torch.arange(nbytes // 4, dtype=torch.int32) * 31 + index).view(torch.float32)
    return tensor, {"label": item[1]}


class SizedLoader:
    """Samples of chosen sizes: ``small`` bytes for the first ``switch_at`` items, then ``large``.

    A build's free-space estimate comes from its first samples, so small-then-large fools it.
    """

    shardcache_key_ignores = ("_count_file", "_tag")

    def __init__(
        self,
        count_file: str | Path,
        small: int,
        large: int,
        switch_at: int = 0,
        tag: str = "run",
    ) -> None:
        self.small = small
        self.large = large
        self.switch_at = switch_at
        self._count_file = str(count_file)
        self._tag = tag

    def sample(self, item: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        record_decode(self._count_file, item, self._tag)
        return sized_sample(item, self.small, self.large, self.switch_at)

    def label(self, item: Any) -> int:
        return int(item[1])


class BadLoader:
    """An `unusable_sample` of ``mode`` for the items whose index is in ``bad``."""

    shardcache_key_ignores = ("_count_file",)

    def __init__(self, count_file: str | Path, mode: str, bad: Sequence[int]) -> None:
        self.mode = mode
        self.bad = sorted(bad)
        self._count_file = str(count_file)

    def sample(self, item: Any) -> Any:
        record_decode(self._count_file, item)
        tensor, metadata = reference_sample(item)
        if item_index(item) not in self.bad:
            return tensor, metadata
        return unusable_sample(self.mode, item, tensor, metadata)

    def label(self, item: Any) -> int:
        return int(item[1])


# ---- the CLI tests ----------------------------------------------------------------------


class TinyLoader:
    """Sample ``i``: 64 float32 counting up from ``1000 * i + 0.5``, label ``i % 3``.

    The halves keep the data float32 on disk (not narrowable), as the size figures assume.
    """

    def __init__(self, width: int = 64) -> None:
        self.width = width

    def sample(self, item: int) -> tuple[torch.Tensor, dict[str, Any]]:
        tensor = torch.arange(self.width, dtype=torch.float32) + (1000 * item + 0.5)
        return tensor, {"label": item % 3, "name": f"item-{item}"}

    def label(self, item: int) -> int:
        return item % 3


# ---- model transforms (module level, so that spawned workers can unpickle them) ---------


def add_one(tensor: torch.Tensor) -> torch.Tensor:
    """An in-place model transform: it must never reach a cached sample."""
    return tensor.add_(1)


def zero_in_place_keep_input(tensor: torch.Tensor) -> torch.Tensor:
    """Zero the served tensor in place, but return what it held: shows the next read's input."""
    before = tensor.clone()
    tensor.mul_(0)
    return before


def zero_served_sample(sample: tuple[torch.Tensor, dict[str, Any]]) -> torch.Tensor:
    """A DataLoader ``collate_fn`` that zeroes the dataset's own tensor in the worker."""
    tensor, _ = sample
    before = tensor.clone()
    tensor.mul_(0)
    return before
