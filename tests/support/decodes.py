"""Counting decodes in every process, DataLoader workers and child builds included.

Each decode appends one line, ``[tag, pid, item]`` as JSON, to a log file opened with
``O_APPEND``: one short ``write`` per line, so lines from concurrent processes never
interleave. A loader keeps the log's path in a private attribute, so that it is not part of
the disk tier's cache key and every process finds the same cache.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple


class Decode(NamedTuple):
    """One logged decode: the run's tag, the decoding process, the item."""

    tag: str
    pid: int
    item: Any


def record_decode(log: str | Path, item: Any, tag: str = "run") -> None:
    """Log one decode of ``item`` by this process under ``tag``."""
    line = json.dumps([tag, os.getpid(), item], default=repr) + "\n"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def decodes(log: str | Path, tag: str | None = None) -> list[Decode]:
    """Every decode logged (of ``tag`` only, when given), in the order they were logged."""
    try:
        lines = Path(log).read_text().splitlines()
    except FileNotFoundError:
        return []
    logged = [Decode(*json.loads(line)) for line in lines]
    return [decode for decode in logged if tag is None or decode.tag == tag]


def decode_count(log: str | Path, tag: str | None = None) -> int:
    """How many decodes were logged (of ``tag`` only, when given)."""
    return len(decodes(log, tag))


def decoded_items(log: str | Path, tag: str | None = None) -> list[Any]:
    """The items decoded, one entry per decode, in the order they were logged."""
    return [decode.item for decode in decodes(log, tag)]
