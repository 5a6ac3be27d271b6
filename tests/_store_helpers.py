"""Raw loaders and checks shared by the disk-tier tests.

This module is importable from subprocesses (put ``tests/`` on ``PYTHONPATH``): the cache
key hashes a loader's class source, so a loader used by several processes must live in a
module file. The decode log (``_log``) and the delay are private attributes, so they are not
part of the key: every process builds and finds the same cache.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

TESTS_DIR = Path(__file__).resolve().parent
DEADLINE = 60.0
"""Seconds a test waits for another process's file or exit before failing."""


# ---- decode counting ----------------------------------------------------------------------


def record_decode(log: str, item: Any) -> None:
    """Append one line per decode; O_APPEND makes concurrent appends from processes safe."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{os.getpid()} {json.dumps(item)}\n".encode())
    finally:
        os.close(fd)


def decode_count(log: str | Path) -> int:
    """How many decodes the loaders writing to ``log`` did, in every process."""
    try:
        return len(Path(log).read_text().splitlines())
    except FileNotFoundError:
        return 0


def decoded_items(log: str | Path) -> list[Any]:
    """The items decoded, one per decode, in the order they were logged."""
    try:
        lines = Path(log).read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line.split(" ", 1)[1]) for line in lines]


def _generator(item: Any) -> torch.Generator:
    text = json.dumps(item, sort_keys=True).encode()
    seed = int.from_bytes(hashlib.sha256(text).digest()[:7], "little")
    return torch.Generator().manual_seed(seed)


# ---- loaders --------------------------------------------------------------------------------


def simple_items(count: int, prefix: str = "img") -> list[list[Any]]:
    """``[["img/0000.png", 0], ...]``: mednet-style split items."""
    return [[f"{prefix}/{index:04d}.png", index % 3] for index in range(count)]


class CountingLoader:
    """Float32 ``[1, side, side]`` samples derived from the item, times ``scale``.

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


class FingerprintLoader(CountingLoader):
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


# ---- model transforms (module level, so spawned workers can unpickle them) -----------------


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


# ---- comparing samples ------------------------------------------------------------------------


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The raw bytes of ``tensor``'s elements in row-major order."""
    flat = tensor.detach().reshape(-1).contiguous()
    return flat.view(torch.uint8).numpy().tobytes()


def _value_differences(expected: Any, actual: Any, where: str) -> list[str]:
    if type(expected) is not type(actual):
        return [f"{where}: {type(actual).__name__} instead of {type(expected).__name__}"]
    if isinstance(expected, torch.Tensor):
        if (expected.dtype, expected.shape) != (actual.dtype, actual.shape):
            return [
                f"{where}: {actual.dtype} {tuple(actual.shape)} instead of "
                f"{expected.dtype} {tuple(expected.shape)}"
            ]
        if tensor_bytes(expected) != tensor_bytes(actual):
            return [f"{where}: tensor bytes differ"]
        return []
    if isinstance(expected, dict):
        if list(expected) != list(actual):
            return [f"{where}: keys {list(actual)} instead of {list(expected)}"]
        return [
            difference
            for key in expected
            for difference in _value_differences(expected[key], actual[key], f"{where}[{key!r}]")
        ]
    if isinstance(expected, list):
        if len(expected) != len(actual):
            return [f"{where}: {len(actual)} elements instead of {len(expected)}"]
        return [
            difference
            for index, (left, right) in enumerate(zip(expected, actual, strict=True))
            for difference in _value_differences(left, right, f"{where}[{index}]")
        ]
    if isinstance(expected, float) and math.isnan(expected):
        return [] if math.isnan(actual) else [f"{where}: {actual!r} instead of nan"]
    if isinstance(expected, float) and expected == 0.0:
        same_sign = math.copysign(1, expected) == math.copysign(1, actual)
        return [] if actual == 0.0 and same_sign else [f"{where}: {actual!r} != {expected!r}"]
    return [] if expected == actual else [f"{where}: {actual!r} != {expected!r}"]


def sample_differences(
    expected: Sequence[Any], actual: Sequence[Any], where: str = ""
) -> list[str]:
    """What differs between two ``(tensor, metadata)`` samples, bit for bit and type for type."""
    if len(actual) != 2:
        return [f"{where}: not a (tensor, metadata) pair"]
    return _value_differences(expected[0], actual[0], f"{where} tensor") + _value_differences(
        expected[1], actual[1], f"{where} metadata"
    )


def dataset_differences(expected: Any, actual: Any) -> list[str]:
    """Differences between two datasets, sample by sample (empty when they serve the same)."""
    if len(expected) != len(actual):
        return [f"{len(actual)} samples instead of {len(expected)}"]
    return [
        difference
        for index in range(len(expected))
        for difference in sample_differences(expected[index], actual[index], f"[{index}]")
    ]


def _canonical(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return {"dtype": str(value.dtype), "shape": list(value.shape), "sha256": _sha(value)}
    if isinstance(value, dict):
        return {"dict": [[key, _canonical(element)] for key, element in value.items()]}
    if isinstance(value, list):
        return [_canonical(element) for element in value]
    return {type(value).__name__: repr(value)}


def _sha(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor_bytes(tensor)).hexdigest()


def dataset_checksum(dataset: Any) -> str:
    """One SHA-256 over every sample's dtypes, shapes, bytes and typed metadata, in order."""
    hasher = hashlib.sha256()
    for index in range(len(dataset)):
        tensor, metadata = dataset[index]
        hasher.update(json.dumps([_canonical(tensor), _canonical(metadata)]).encode())
    return hasher.hexdigest()


# ---- processes --------------------------------------------------------------------------------


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a child Python: ``tests/`` importable, plus ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


def run_python(script: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120):
    """Run ``script`` with this interpreter; return the completed process (output captured)."""
    return subprocess.run(
        [sys.executable, str(script), *args],
        env=env if env is not None else subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_for(path: Path, deadline: float = DEADLINE) -> None:
    """Wait until ``path`` exists, or raise TimeoutError naming it."""
    end = time.monotonic() + deadline
    while not path.exists():
        if time.monotonic() > end:
            raise TimeoutError(f"{path} did not appear within {deadline} s")
        time.sleep(0.01)


def key_server() -> None:
    """Answer JSON lines ``{"subset", "items", "attributes"}`` with their cache key.

    Run in a subprocess (``python -c "import _store_helpers; _store_helpers.key_server()"``)
    with another ``PYTHONHASHSEED``; it also reports ``hash()`` of a string, which that seed
    salts, to show the processes really differ.
    """
    from shardcache.store import cache_key

    for line in sys.stdin:
        request = json.loads(line)
        loader = AttributeLoader(**request["attributes"])
        digest = cache_key(request["subset"], request["items"], loader).digest
        print(json.dumps({"digest": digest, "str_hash": hash("shardcache")}), flush=True)
