"""Owner files: who holds a lock, since when, and how far its build got."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .fs import read_regular


def owner_path(lock_path: Path) -> Path:
    """The owner file that goes with a build lock file."""
    return lock_path.with_suffix(".owner.json")


MAX_OWNER_BYTES = 1 << 16
"""An owner file is a few hundred bytes; anything larger is not one."""


def read_owner(path: Path) -> dict[str, Any] | None:
    """The owner record of a lock, or None when there is none or it is unreadable."""
    try:
        owner = json.loads(read_regular(path, MAX_OWNER_BYTES))
    except (OSError, ValueError, RecursionError):
        return None
    return owner if isinstance(owner, dict) else None


def describe_owner(owner: dict[str, Any] | None) -> str:
    """``pid 123 on host h since 12:00:00 (450/2000 samples)``, as far as it is known."""
    if owner is None:
        return "an unknown process"
    text = f"pid {owner.get('pid')} on host {owner.get('host')} since {owner.get('since')}"
    if owner.get("total"):
        text += f" ({owner.get('done', 0)}/{owner['total']} samples)"
    return text
