"""A raw data loader that counts its decodes across processes (workers, DDP ranks).

It lives in a module file because the cache key hashes the loader's class source.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from shardcache.core.types import Sample
from shardcache.loaders import ImageFileLoader, ImageMode


class CountingImageLoader(ImageFileLoader):
    """`ImageFileLoader` that appends one line to a log file per decode.

    The log path is listed in ``shardcache_key_ignores``: it does not enter the cache key,
    so runs that count into different files share caches. Appends with ``O_APPEND`` are atomic, so
    DataLoader workers and DDP ranks can count into one file.
    """

    shardcache_key_ignores = ("_decode_log",)

    def __init__(
        self,
        root: str | PathLike[str],
        *,
        mode: ImageMode = "gray",
        size: Sequence[int] | None = None,
        decode_log: str | PathLike[str] | None = None,
    ) -> None:
        super().__init__(root, mode=mode, size=size)
        self._decode_log = None if decode_log is None else str(decode_log)

    def sample(self, item: Any) -> Sample:
        """Decode ``item`` and record one decode."""
        if self._decode_log is not None:
            descriptor = os.open(self._decode_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(descriptor, b"1\n")
            finally:
                os.close(descriptor)
        return super().sample(item)


def count_decodes(decode_log: str | PathLike[str]) -> int:
    """Decodes recorded in ``decode_log`` so far (0 when it does not exist)."""
    try:
        return Path(decode_log).read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0
