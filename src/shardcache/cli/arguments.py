"""Parsing of sizes, durations and cache names given on the command line."""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from datetime import timedelta

from ..store.inventory import CacheEntry

NAME_HELP = (
    "a cache's name as `shardcache list` shows it, a unique prefix of that name, "
    "or a prefix of its key (at least 3 characters)"
)

MIN_PREFIX_CHARS = 3
"""A prefix shorter than this names no cache: ``clear "$UNSET"`` must not clear one."""


class UsageError(Exception):
    """The command line asks for something that cannot be (exit status 2)."""


_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgtp])(i?)(b?)|(b?))\s*$", re.IGNORECASE)
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?)\s*([smhdw])", re.IGNORECASE)
_DURATION = re.compile(r"(?:\s*\d+(?:\.\d*)?\s*[smhdw])+\s*", re.IGNORECASE)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_size(text: str) -> int:
    """Bytes in ``text``: ``10G``, ``500MiB``, ``1.5GiB``, ``2GB``, ``4096``.

    K, M, G, T, P alone or with ``iB`` are powers of 1024; with ``B`` alone (``GB``) powers
    of 1000.
    """
    match = _SIZE.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r}: expected a number with an optional unit, like 10G, "
            "500MiB or 2GB"
        )
    number, prefix, binary, byte = match[1], match[2], match[3], match[4]
    if prefix is None:
        return int(float(number))
    power = "kmgtp".index(prefix.lower()) + 1
    base = 1000 if byte and not binary else 1024
    return int(float(number) * base**power)


def parse_duration(text: str) -> timedelta:
    """The time span in ``text``: ``7d``, ``12h``, ``1d12h``, ``30m``, ``2w``, ``90s``."""
    if not _DURATION.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: expected a number and a unit (s, m, h, d, w), "
            "like 7d, 12h or 1d12h"
        )
    parts = _DURATION_PART.finditer(text)
    return timedelta(seconds=sum(float(part[1]) * _SECONDS[part[2].lower()] for part in parts))


def resolve_names(entries: list[CacheEntry], names: Sequence[str]) -> list[CacheEntry]:
    """The entries ``names`` designate, in order; `UsageError` for unknown or ambiguous."""
    chosen: list[CacheEntry] = []
    for name in names:
        found = [entry for entry in entries if name in {entry.name, entry.key}]
        if not found and len(name.strip()) < MIN_PREFIX_CHARS:
            raise UsageError(
                f"{name!r} is too short to name a cache: give its name as `shardcache list` "
                f"shows it, or at least {MIN_PREFIX_CHARS} characters of its name or key"
            )
        if not found:
            found = [
                entry
                for entry in entries
                if entry.name.startswith(name) or (entry.key or "").startswith(name.lower())
            ]
        if not found:
            raise UsageError(f"no cache named {name!r} (see `shardcache list`)")
        if len({entry.name for entry in found}) > 1:
            candidates = ", ".join(sorted({entry.name for entry in found}))
            raise UsageError(f"{name!r} is ambiguous: it matches {candidates}")
        chosen.extend(entry for entry in found if entry not in chosen)
    return chosen
