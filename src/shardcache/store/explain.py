"""Say why a cache missed: the nearest cache of the same subset and what differs.

The other caches of the subset are neighbours: they are read here and nowhere else, and
only through `_read_json`, which never waits on a FIFO, bounds what it reads, and turns any
odd content (not JSON, nested too deeply, of the wrong shape) into a skipped neighbour and
a debug line. A neighbour can never break a build.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .fs import read_regular
from .key import CacheKey, canonical_json
from .layout import CACHE_NAME, ITEMS_NAME, MANIFEST_NAME, CacheRoot, safe_subset_name

logger = logging.getLogger(__name__)

MAX_NEIGHBOUR_BYTES = 64 << 20
"""A neighbour's manifest or items file larger than this is skipped, not read."""

MAX_LISTED = 3
"""Differences named per kind before "and N more"."""


def _read_json(path: Path) -> Any:
    """The JSON in the neighbour's file ``path``, or None (logged) for anything odd."""
    try:
        return json.loads(read_regular(path, MAX_NEIGHBOUR_BYTES))
    except (OSError, ValueError, RecursionError) as error:
        logger.debug("skipping %s to explain a cache miss: %r", path, error)
        return None


def _object(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (a neighbour's odd field)."""
    return value if isinstance(value, dict) else {}


def _key_inputs(path: Path) -> dict[str, Any] | None:
    """A neighbour's key inputs, from its manifest (of any format version), or None."""
    manifest = _read_json(path / MANIFEST_NAME)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("key_inputs"), dict):
        return None
    inputs: dict[str, Any] = manifest["key_inputs"]
    return inputs


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences between two key-input dicts, most telling first."""
    found: list[str] = []
    if old.get("format_version") != new.get("format_version"):
        found.append(f"format version {old.get('format_version')} -> {new['format_version']}")
    if old.get("num_items") != new.get("num_items"):
        found.append(f"item count {old.get('num_items')} -> {new['num_items']}")
    elif old.get("items_sha256") != new.get("items_sha256"):
        found.append("items")
    old_loader, new_loader = _object(old.get("loader")), _object(new.get("loader"))
    if old_loader.get("fingerprint") != new_loader.get("fingerprint"):
        found.append(
            f"loader fingerprint {old_loader.get('fingerprint')!r} -> "
            f"{new_loader.get('fingerprint')!r}"
        )
    if old_loader.get("class") != new_loader.get("class"):
        found.append(f"loader class {old_loader.get('class')} -> {new_loader.get('class')}")
    elif old_loader.get("source_sha256") != new_loader.get("source_sha256"):
        found.append(f"loader class source ({new_loader.get('class')} was edited)")
    old_attributes = _object(old_loader.get("attributes"))
    new_attributes = _object(new_loader.get("attributes"))
    found.extend(
        f"loader attribute {name!r} {_shown(old_attributes, name)} -> "
        f"{_shown(new_attributes, name)}"
        for name in sorted(set(old_attributes) | set(new_attributes))
        if old_attributes.get(name, _UNSET) != new_attributes.get(name, _UNSET)
    )
    found.extend(_transform_differences(old.get("transforms", []), new.get("transforms", [])))
    return found


_UNSET = "<unset>"
SHOWN_CHARS = 80
"""Characters of a described value shown in a difference."""


def _shown(described: dict[str, Any], name: str) -> str:
    """An attribute's description, compact and bounded (``<unset>`` when missing)."""
    if name not in described:
        return _UNSET
    text = canonical_json(described[name])
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def _label(described: object) -> str:
    """What a transform's description is: its class or function name."""
    if isinstance(described, dict) and len(described) == 1:
        (kind, body), *_ = described.items()
        if isinstance(body, dict):
            name = body.get("class") or body.get("name")
            if isinstance(name, str):
                return name
        return str(kind)
    return type(described).__name__


def _transform_differences(old: object, new: object) -> list[str]:
    """``transform [1] (torchvision...Normalize)``: which transforms changed."""
    before = old if isinstance(old, list) else []
    after = new if isinstance(new, list) else []
    if len(before) != len(after):
        return [f"transform count {len(before)} -> {len(after)}"]
    return [
        f"transform [{index}] ({_label(now)})"
        for index, (was, now) in enumerate(zip(before, after, strict=True))
        if was != now
    ]


def _item_differences(path: Path, items: Sequence[Any]) -> str:
    """Which items differ from the ones a cache was built from."""
    old = _read_json(path / ITEMS_NAME)
    if not isinstance(old, list):
        return "items"
    try:
        changed = [
            index
            for index, (before, after) in enumerate(zip(old, items, strict=False))
            if canonical_json(before) != canonical_json(after)
        ]
    except (TypeError, ValueError, RecursionError):
        return "items"
    if not changed:
        return "items"
    shown = ", ".join(
        f"[{index}] {old[index]!r} -> {items[index]!r}" for index in changed[:MAX_LISTED]
    )
    more = f" and {len(changed) - MAX_LISTED} more" if len(changed) > MAX_LISTED else ""
    return f"{len(changed)} items: {shown}{more}"


def explain_miss(root: CacheRoot, subset: str, key: CacheKey, items: Sequence[Any]) -> str:
    """One line on why ``subset`` has no cache for ``key``, naming the nearest candidate."""
    prefix = safe_subset_name(subset)
    best: tuple[int, Path, list[str]] | None = None
    for path in root.published():
        match = CACHE_NAME.match(path.name)
        if match is None or match["subset"] != prefix:
            continue
        inputs = _key_inputs(path)
        if inputs is None:
            continue
        differences = _differences(inputs, key.inputs)
        if best is None or len(differences) < best[0]:
            best = (len(differences), path, differences)
    name = root.cache_name(subset, key.digest)
    if best is None:
        return f"no cache for {name}: no earlier cache of subset {subset!r} in {root.path}"
    _, path, differences = best
    differences = [
        _item_differences(path, items) if difference == "items" else difference
        for difference in differences
    ] or ["its key (same inputs, another shardcache version?)"]
    return f"no cache for {name}; nearest is {path.name}, which differs in " + "; ".join(
        differences
    )
