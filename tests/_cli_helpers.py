"""Helpers for test_cli.py: a tiny raw loader, a cache builder, and a reader process.

Run as a script, this module is the reader process of the clear and prune tests::

    python tests/_cli_helpers.py CACHE READY GO RESULT

It opens the cache, reads one sample, creates READY, waits for GO, then reads every sample
and writes their digest to RESULT.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from shardcache.store import CacheDataset, ensure_cache

HELPERS = Path(__file__).resolve()
DEADLINE = 60.0
"""Seconds any handshake with another process may take before the test fails."""

SHARD_BYTES = 2048
"""With 64 float32 per sample (256 bytes): 8 samples per shard."""


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


def build(cache_dir: Path, subset: str, items: Sequence[int]) -> Path:
    """Build (or open) the cache of ``items`` and close it again; its directory."""
    dataset = ensure_cache(cache_dir, subset, list(items), TinyLoader(), shard_bytes=SHARD_BYTES)
    dataset.close()
    return dataset.path


def samples_digest(samples: Iterable[tuple[torch.Tensor, dict[str, Any]]]) -> str:
    """One SHA-256 over every sample's tensor bytes and metadata."""
    hasher = hashlib.sha256()
    for tensor, metadata in samples:
        hasher.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
        hasher.update(json.dumps(metadata, sort_keys=True).encode())
    return hasher.hexdigest()


def expected_digest(items: Sequence[int]) -> str:
    """The digest a correct cache of ``items`` gives."""
    loader = TinyLoader()
    return samples_digest(loader.sample(item) for item in items)


def wait_for(path: Path, process: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until ``path`` exists; fail early when ``process`` died first."""
    deadline = time.monotonic() + DEADLINE
    while not path.exists():
        if process is not None and process.poll() is not None:
            _, err = process.communicate()
            raise AssertionError(f"reader exited with {process.returncode}: {err.decode()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {DEADLINE} s")
        time.sleep(0.02)


def start_reader(
    cache: Path, workdir: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start the reader process on ``cache`` and wait until it has read one sample."""
    process = subprocess.Popen(
        [sys.executable, str(HELPERS), str(cache), *(str(workdir / n) for n in NAMES)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    wait_for(workdir / "ready", process)
    return process


def finish_reader(process: subprocess.Popen[bytes], workdir: Path) -> str:
    """Let the reader read everything; the digest it computed."""
    (workdir / "go").touch()
    _, err = process.communicate(timeout=DEADLINE)
    assert process.returncode == 0, err.decode()
    return (workdir / "result").read_text()


NAMES = ("ready", "go", "result")


def _serve(cache: str, ready: str, go: str, result: str) -> None:
    dataset = CacheDataset(cache)
    dataset[0]  # maps every shard
    Path(ready).touch()
    wait_for(Path(go))
    digest = samples_digest(dataset[index] for index in range(len(dataset)))
    Path(result).write_text(digest)


if __name__ == "__main__":
    _serve(*sys.argv[1:])
