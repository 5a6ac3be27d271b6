"""Cache keys: SHA-256 over the format version, the split items and the loader's identity.

Never the salted builtin ``hash()`` (two processes would disagree) and never a random
fallback (the cache would silently miss on every run): whatever cannot be hashed is an
error that names it and says how to fix it.
"""

from __future__ import annotations

import enum
import hashlib
import inspect
import json
import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

import torch

from ..core.errors import FingerprintError, SplitError
from ..core.samples import describe
from .format import FORMAT_VERSION
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


def items_digest(subset: str, items: Sequence[Any]) -> str:
    """SHA-256 of the items as one canonical JSON list (order matters)."""
    try:
        # One call for the whole list: the same bytes as joining the items' texts.
        return hashlib.sha256(canonical_json(list(items)).encode()).hexdigest()
    except (TypeError, ValueError):
        pass  # find and name the item at fault
    hasher = hashlib.sha256()
    hasher.update(b"[")
    for index, item in enumerate(items):
        try:
            # Encoding inside the try: a lone surrogate (json.loads accepts "\\ud800") cannot
            # be UTF-8 encoded, and must be a SplitError naming the item, not a bare one.
            data = canonical_json(item).encode()
        except (TypeError, ValueError) as error:
            raise SplitError(
                f"{describe(subset, index, item)}: split items must be JSON values (str, "
                f"number, list, dict with string keys), as read from a CSV or JSON protocol "
                f"file, to be hashed into a cache key ({error}). Convert the item, e.g. a "
                "Path to str, a tuple to list"
            ) from error
        if index:
            hasher.update(b",")
        hasher.update(data)
    hasher.update(b"]")
    return hasher.hexdigest()


def _jsonable(value: Any, where: str) -> Any:
    """``value`` as plain JSON, converting the common non-JSON settings of a loader."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return repr(value)
        return value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, enum.Enum):
        return _jsonable(value.value, where)
    if isinstance(value, torch.dtype | torch.device):
        return str(value)
    if isinstance(value, list | tuple):
        return [_jsonable(element, f"{where}[{i}]") for i, element in enumerate(value)]
    if isinstance(value, dict):
        converted = {}
        for key, element in value.items():
            if not isinstance(key, str):
                raise FingerprintError(f"{where} has a non-string key {key!r}")
            converted[key] = _jsonable(element, f"{where}[{key!r}]")
        return converted
    raise FingerprintError(f"{where} is a {type(value).__module__}.{type(value).__qualname__}")


_SOURCE_DIGESTS: weakref.WeakKeyDictionary[type, str] = weakref.WeakKeyDictionary()
"""Per class: ``inspect.getsource`` re-parses the module (~10 ms), once is enough."""


def _class_source_digest(cls: type) -> str:
    """SHA-256 over the source of ``cls`` and its Python-defined bases (cached per class)."""
    if cls in _SOURCE_DIGESTS:
        return _SOURCE_DIGESTS[cls]
    hasher = hashlib.sha256()
    for klass in cls.__mro__:
        if klass.__module__ in {"builtins", "typing", "typing_extensions", "abc"}:
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError) as error:
            if klass is cls:
                raise FingerprintError(
                    f"the source of raw data loader class {cls.__qualname__} cannot be read "
                    f"({error}); add a fingerprint() -> str method to it"
                ) from error
            source = f"{klass.__module__}.{klass.__qualname__}"
        hasher.update(source.encode())
    digest = _SOURCE_DIGESTS[cls] = hasher.hexdigest()
    return digest


def loader_identity(loader: object) -> dict[str, Any]:
    """What identifies a loader's output: ``fingerprint()``, or class, source and settings.

    Without ``fingerprint()``: the qualified class name, a hash of the class source (and
    its bases'), and every public attribute (names without a leading ``_``). Attributes
    must be JSON values, paths, enums, dtypes or devices.
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
    attributes: dict[str, Any] = {}
    names = sorted(getattr(loader, "__dict__", {}))
    names += [n for n in getattr(cls, "__slots__", ()) if hasattr(loader, n)]
    for attribute in names:
        if attribute.startswith("_"):
            continue
        where = f"raw data loader attribute {name}.{attribute}"
        try:
            attributes[attribute] = _jsonable(getattr(loader, attribute), where)
        except FingerprintError as error:
            raise FingerprintError(
                f"{error}, which cannot be hashed into a cache key: make it a JSON value, "
                "prefix its name with '_' if it does not change the samples, or add a "
                f"fingerprint() -> str method to {cls.__qualname__} that changes whenever "
                "its samples would"
            ) from error
    return {
        "class": name,
        "source_sha256": _class_source_digest(cls),
        "attributes": attributes,
    }


def cache_key(subset: str, items: Sequence[Any], loader: object) -> CacheKey:
    """The key of ``items`` decoded by ``loader``; the subset's name is not part of it."""
    if len(items) == 0:
        raise SplitError(f"subset {subset!r} is empty: there is nothing to cache")
    inputs = {
        "format_version": FORMAT_VERSION,
        "num_items": len(items),
        "items_sha256": items_digest(subset, items),
        "loader": loader_identity(loader),
    }
    digest = hashlib.sha256(canonical_json(inputs).encode()).hexdigest()
    return CacheKey(digest=digest, inputs=inputs)
