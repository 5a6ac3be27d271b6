"""Cache keys: SHA-256 over the format version, items, loader and build transforms.

The loader's identity and the transforms are described by `identity.describe`.

Never the salted builtin ``hash()`` (two processes would disagree) and never a random
fallback (the cache would silently miss on every run): whatever cannot be hashed is an
error that names it and says how to fix it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..core.errors import FingerprintError, SplitError
from ..core.samples import describe as describe_item
from .attributes import class_source_digest
from .format import FORMAT_VERSION
from .identity import describe, describe_attributes
from .layout import KEY_CHARS_IN_NAME


@dataclass(frozen=True)
class CacheKey:
    """A cache's key and the inputs it was computed from (shown by ``shardcache info``)."""

    digest: str
    inputs: dict[str, Any]

    @property
    def short(self) -> str:
        """The part of the key that names the cache directory."""
        return self.digest[:KEY_CHARS_IN_NAME]


def canonical_json(value: Any) -> str:
    """The one JSON text for ``value``: sorted keys, no spaces, NaN refused."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def _first_non_string_key(value: Any, path: str) -> str | None:
    """The path of the first dict key in ``value`` that is not a str, or None."""
    if isinstance(value, dict):
        for key, element in value.items():
            if not isinstance(key, str):
                return f"{path}[{key!r}]"
            found = _first_non_string_key(element, f"{path}[{key!r}]")
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for index, element in enumerate(value):
            found = _first_non_string_key(element, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def _item_error(subset: str, index: int, item: Any, problem: str) -> SplitError:
    return SplitError(
        f"{describe_item(subset, index, item)}: split items must be JSON values (str, "
        f"number, list, dict with string keys), as read from a CSV or JSON protocol "
        f"file, to be hashed into a cache key ({problem}). Convert the item, e.g. a "
        "Path to str"
    )


def items_digest(subset: str, items: Sequence[Any]) -> str:
    """SHA-256 of the items as one canonical JSON list (order matters).

    JSON has only string keys, and ``json.dumps`` turns ``{1: "x"}`` into ``{"1": "x"}``
    silently: two splits would share a key. A non-string key is refused instead. Tuples
    are accepted and hash as lists (``list(zip(paths, labels))`` is how items are made).
    """
    as_list = list(items)
    try:
        # One call for the whole list: the same bytes as joining the items' texts. The
        # round trip proves that nothing was converted (no non-string key anywhere).
        text = canonical_json(as_list)
        if json.loads(text) == as_list:
            return hashlib.sha256(text.encode()).hexdigest()
    except (TypeError, ValueError, RecursionError):
        pass  # find and name the item at fault
    hasher = hashlib.sha256()
    hasher.update(b"[")
    for index, item in enumerate(as_list):
        try:
            # Encoding inside the try: a lone surrogate (json.loads accepts "\\ud800") cannot
            # be UTF-8 encoded, and must be a SplitError naming the item, not a bare one.
            data = canonical_json(item).encode()
        except (TypeError, ValueError, RecursionError) as error:
            raise _item_error(subset, index, item, str(error)) from error
        bad_key = _first_non_string_key(item, "item")
        if bad_key is not None:
            raise _item_error(
                subset, index, item, f"{bad_key} has a non-string key, which JSON cannot hold"
            )
        if index:
            hasher.update(b",")
        hasher.update(data)
    hasher.update(b"]")
    return hasher.hexdigest()


def loader_identity(loader: object) -> dict[str, Any]:
    """What identifies a loader's output: ``fingerprint()``, or class, source and settings.

    Without ``fingerprint()``: the qualified class name, a hash of the class source (and
    its bases'), and every instance attribute, private ones included, except those the
    class lists in ``shardcache_key_ignores`` (see `identity.describe` for what an
    attribute may hold).

    Raises:
        FingerprintError: an attribute cannot be described; the message names it.
    """
    cls = type(loader)
    name = f"{cls.__module__}.{cls.__qualname__}"
    fingerprint = getattr(loader, "fingerprint", None)
    if callable(fingerprint):
        value = fingerprint()
        if not isinstance(value, str):
            raise FingerprintError(
                f"{name}.fingerprint() returned {type(value).__name__}, expected str"
            )
        return {"fingerprint": value}
    source = class_source_digest(cls)
    if source is None:
        raise FingerprintError(
            f"the source of raw data loader class {cls.__qualname__} cannot be read; define "
            "it in a module file, or add a fingerprint() -> str method to it"
        )
    return {
        "class": name,
        "source_sha256": source,
        "attributes": describe_attributes(loader, cls.__qualname__),
    }


def transforms_identity(transforms: Sequence[object]) -> list[Any]:
    """The descriptions of the transforms a build applies before storing samples."""
    return [describe(transform, f"transforms[{i}]") for i, transform in enumerate(transforms)]


def cache_key(
    subset: str, items: Sequence[Any], loader: object, transforms: Sequence[object] = ()
) -> CacheKey:
    """The key of ``items`` decoded by ``loader``, then ``transforms``; never the subset's name.

    Raises:
        SplitError: the subset is empty, or an item is not a JSON value.
        FingerprintError: the loader or a transform cannot be described.
    """
    if len(items) == 0:
        raise SplitError(f"subset {subset!r} is empty: there is nothing to cache")
    inputs: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "num_items": len(items),
        "items_sha256": items_digest(subset, items),
        "loader": loader_identity(loader),
    }
    if transforms:
        inputs["transforms"] = transforms_identity(transforms)
    digest = hashlib.sha256(canonical_json(inputs).encode()).hexdigest()
    return CacheKey(digest=digest, inputs=inputs)
