"""What of an object a cache key reads: its class's source, and its instance attributes.

The instance attributes are all of them, private ones included, except those its class
(or a base) lists in ``shardcache_key_ignores``; `identity.describe` describes each.
"""

from __future__ import annotations

import hashlib
import inspect
import types
import weakref
from collections.abc import Iterator
from typing import Any

from ..core.errors import FingerprintError

KEY_IGNORES = "shardcache_key_ignores"
"""The class attribute listing instance attributes that do not change what a loader makes."""

_SOURCE_DIGESTS: weakref.WeakKeyDictionary[type, str] = weakref.WeakKeyDictionary()
"""Per class: ``inspect.getsource`` re-parses the module (~10 ms), once is enough."""

_SKIPPED_MODULES = frozenset({"builtins", "typing", "typing_extensions", "abc", "enum"})


def qualified(kind: type | types.FunctionType | types.BuiltinFunctionType) -> str:
    """``module.QualName`` of a class or function."""
    return f"{kind.__module__}.{kind.__qualname__}"


def class_source_digest(cls: type) -> str | None:
    """SHA-256 over the source of ``cls`` and its Python-defined bases (cached per class).

    None when the source of ``cls`` itself cannot be read (a class made in C, in a REPL,
    or by ``exec``): the caller says what to do.
    """
    if cls in _SOURCE_DIGESTS:
        return _SOURCE_DIGESTS[cls]
    hasher = hashlib.sha256()
    for klass in cls.__mro__:
        if klass.__module__ in _SKIPPED_MODULES:
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            if klass is cls:
                return None
            source = qualified(klass)
        hasher.update(source.encode())
    digest = _SOURCE_DIGESTS[cls] = hasher.hexdigest()
    return digest


def key_ignores(cls: type) -> frozenset[str]:
    """The attribute names ``cls`` and its bases list in ``shardcache_key_ignores``."""
    names: set[str] = set()
    for klass in cls.__mro__:
        declared = vars(klass).get(KEY_IGNORES, ())
        if isinstance(declared, str) or not all(isinstance(name, str) for name in declared):
            raise FingerprintError(
                f"{klass.__qualname__}.{KEY_IGNORES} = {declared!r}: expected a tuple of "
                "attribute names"
            )
        names.update(declared)
    return frozenset(names)


def _declared(value: object, name: str) -> bool:
    """Whether ``name`` is an attribute of ``value`` or declared by its class."""
    if hasattr(value, name):
        return True
    return any(name in vars(klass).get("__annotations__", {}) for klass in type(value).__mro__)


def instance_attributes(value: object, owner: str) -> Iterator[tuple[str, Any]]:
    """``(name, value)`` of every instance attribute (dict and slots) the key covers.

    Raises:
        FingerprintError: ``shardcache_key_ignores`` names an attribute that does not exist.
    """
    cls = type(value)
    ignored = key_ignores(cls)
    for name in sorted(ignored):
        if not _declared(value, name):
            raise FingerprintError(
                f"{cls.__qualname__}.{KEY_IGNORES} lists {name!r}, which {owner} does not "
                f"have: a typo would put a real setting out of the key. Set it in __init__ "
                f"(e.g. self.{name} = None) or remove it from the list"
            )
    names = set(getattr(value, "__dict__", {}))
    for klass in cls.__mro__:
        slots = vars(klass).get("__slots__", ())
        names.update([slots] if isinstance(slots, str) else slots)
    names.discard("__dict__")
    names.discard("__weakref__")
    for name in sorted(names - ignored):
        try:
            attribute = object.__getattribute__(value, name)
        except AttributeError:
            continue  # an unset slot
        yield name, attribute
